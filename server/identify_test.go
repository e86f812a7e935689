package server

import (
	"context"
	"encoding/hex"
	"fmt"
	"testing"
	"testing/synctest"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/card/sim"
	"github.com/wsrc-go/wsrc/internal/testenv/wstest"
	"github.com/wsrc-go/wsrc/protocol"
)

// simAgent connects a card agent that answers the identification from
// the simulated card c as our agent does (card.TransmitFollow), and
// returns once the server has declared the card ready.
func (e *env) simAgent(c *sim.Card) *wstest.Peer {
	e.t.Helper()
	p := e.card("")
	p.Send(fmt.Sprintf(`{"msg_type":"hello","client_type":"card","atr":"%x"}`, c.ATR()))
	expectJSON(e.t, p.Recv(), `{"msg_type": "hello_ack"}`)
	for {
		m := decodeObj(e.t, p.Recv())
		switch m["msg_type"] {
		case "c_apdu":
			cmd, err := hex.DecodeString(m["command"].(string))
			if err != nil {
				e.t.Fatal(err)
			}
			r, err := card.TransmitFollow(context.Background(), c, cmd)
			if err != nil {
				e.t.Fatal(err)
			}
			p.Send(fmt.Sprintf(`{"response": "%x", "sw": "%x", "msg_type": "r_apdu"}`, r[:len(r)-2], r[len(r)-2:]))
		case "state_notification":
			if m["new_state"] != "ready" {
				e.t.Fatalf("state %v during identification", m["new_state"])
			}
			return p
		default:
			e.t.Fatalf("unexpected %v during identification", m)
		}
	}
}

// TestIdentifySimulatedCards: the server's identification finds the IMSI
// of a simulated UICC whose EF.IMSI needs no PIN (list_cards and the
// status page's snapshot show it, select_card by imsi finds the card), finds none where a PIN guards it
// (the card is identified all the same), and finds the EID behind each
// alternative ISD-R AID.
func TestIdentifySimulatedCards(t *testing.T) {
	const iccid, eid, imsi = "8949440000001155314", "89049032123451234512345678901235", "001010123456789"
	atr := hex.EncodeToString(sim.ATRT0)
	for _, tc := range []struct {
		name string
		cfg  sim.Config
		ids  string // select_card_ack identities
		by   [2]string
	}{
		{"UICC with readable IMSI", sim.Config{EID: sim.NoEID, USIM: true},
			`{"ATR": "` + atr + `", "ICCID": "` + iccid + `", "IMSI": "` + imsi + `"}`, [2]string{"imsi", imsi}},
		{"eUICC with a USIM profile, T=0", sim.Config{USIM: true, T0GetResponse: true},
			`{"ATR": "` + atr + `", "EID": "` + eid + `", "ICCID": "` + iccid + `", "IMSI": "` + imsi + `"}`, [2]string{"IMSI", imsi}},
		{"IMSI behind a PIN", sim.Config{EID: sim.NoEID, USIM: true, IMSINeedsPIN: true},
			`{"ATR": "` + atr + `", "ICCID": "` + iccid + `"}`, [2]string{"iccid", iccid}},
		{"5ber ISD-R", sim.Config{ISDRAID: card.ISDRAlternatives[0]},
			`{"ATR": "` + atr + `", "EID": "` + eid + `", "ICCID": "` + iccid + `"}`, [2]string{"eid", eid}},
		{"eSIM.me v2 ISD-R", sim.Config{ISDRAID: card.ISDRAlternatives[1], USIM: true},
			`{"ATR": "` + atr + `", "EID": "` + eid + `", "ICCID": "` + iccid + `", "IMSI": "` + imsi + `"}`, [2]string{"eid", eid}},
		{"XeSIM ISD-R", sim.Config{ISDRAID: card.ISDRAlternatives[2]},
			`{"ATR": "` + atr + `", "EID": "` + eid + `", "ICCID": "` + iccid + `"}`, [2]string{"eid", eid}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newEnv(t, Config{})
				c := e.simAgent(sim.New(tc.cfg))
				u := e.helloUser()
				u.Send(`{"msg_type": "list_cards"}`)
				expectJSON(t, u.Recv(), `{"cards": [{"remote_addr": ["0.0.0.0", 0], "identities": `+tc.ids+`, "state": "ready"}], "msg_type": "list_cards_ack"}`)
				// The status page's snapshot has the same identities.
				cards, _ := e.srv.Snapshot()
				if len(cards) != 1 || cards[0].Identities[protocol.IdentityIMSI] != sim.New(tc.cfg).Identity().IMSI {
					t.Errorf("status snapshot %+v", cards)
				}
				if tc.cfg.IMSINeedsPIN {
					u.Send(`{"msg_type": "select_card", "id_type": "imsi", "id_str": "` + imsi + `"}`)
					expectError(t, u.Recv(), "no card with IMSI "+imsi)
				}
				selectCard(t, u, tc.by[0], tc.by[1], tc.ids)
				expectJSON(t, c.Recv(), `{"new_state": "associated", "msg_type": "state_notification"}`)
			})
		})
	}
}
