package server

import (
	"encoding/json"
	"strings"
	"testing"
	"testing/synctest"

	"github.com/gorilla/websocket"

	"github.com/wsrc-go/wsrc/protocol"
)

// A card agent cannot make list_cards_ack large: hello values beyond what
// a card and agent can have are refused, identities beyond what a card
// can have are dropped, and a reset's ATR is bounded too. Issue 10,
// point 5.
func TestIdentityBounds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{})
		for _, tc := range []struct{ hello, want string }{
			{`{"msg_type":"hello","client_type":"card","atr":"` + strings.Repeat("3b", 34) + `"}`, "atr is 34 bytes; an ATR has at most 33"},
			{`{"msg_type":"hello","client_type":"card","atr":"3b00","reader":"` + strings.Repeat("r", 60000) + `"}`, "reader name is 60000 bytes; the limit is 128"},
			{`{"msg_type":"hello","client_type":"card","atr":"3b00","agent":"` + strings.Repeat("a", 129) + `"}`, "agent name is 129 bytes"},
		} {
			c := e.card("")
			c.Send(tc.hello)
			expectError(t, c.Recv(), "invalid hello: "+tc.want)
			expectClosed(t, c, websocket.CloseProtocolError, "invalid hello")
		}
		// 33 bytes and 128-byte names are fine.
		c := e.card("")
		c.Send(`{"msg_type":"hello","client_type":"card","atr":"` + strings.Repeat("3b", 33) + `","reader":"` + strings.Repeat("r", 128) + `"}`)
		expectJSON(t, c.Recv(), `{"msg_type": "hello_ack"}`)
		expectCAPDU(t, c, cmdSelectISDR)
		identifyATROnly(t, c)

		// A card that returns 60 KiB for EF.ICCID: no 120,000-digit ICCID.
		big := e.uiccCard("3b9f", strings.Repeat("98", 60<<10))
		u := e.helloUser()
		u.Send(`{"msg_type": "list_cards"}`)
		ack := u.Recv()
		if len(ack) > 2000 || strings.Contains(ack, "ICCID") {
			t.Fatalf("list_cards_ack of %d bytes: %.300s", len(ack), ack)
		}
		// ... and the card is usable by its ATR.
		selectCard(t, u, "atr", "3b9f", `{"ATR": "3b9f"}`)
		expectJSON(t, big.Recv(), stateAssoc)
		// A reset_resp whose ATR is too long is refused; the ATR stays.
		u.Send(`{"msg_type": "reset_req"}`)
		expectJSON(t, big.Recv(), `{"msg_type": "reset_req"}`)
		big.Send(`{"msg_type": "reset_resp", "atr": "` + strings.Repeat("3b", 34) + `"}`)
		expectError(t, u.Recv(), "card agent sent an invalid reply: invalid reset_resp: atr is 34 bytes")
		expectError(t, big.Recv(), "invalid reset_resp")
		if ids := e.srv.Cards()[1].Identities; ids["ATR"] != "3b9f" {
			t.Fatalf("identities after the bad reset: %v", ids)
		}
	})
}

// list_cards with our filter extension lists a subset, and says how many
// matched; a plain list_cards is answered as pySim's server answers it.
// Issue 10, point 5.
func TestListCardsFilter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{})
		for i, name := range []string{"pi-1", "pi-1", "pi-2"} {
			c := e.card("")
			c.Send(`{"msg_type":"hello","client_type":"card","atr":"3b0` + string(rune('0'+i)) + `","agent":"` + name + `","reader":"r` + string(rune('0'+i)) + `"}`)
			expectJSON(t, c.Recv(), `{"msg_type": "hello_ack"}`)
			expectCAPDU(t, c, cmdSelectISDR)
			identifyATROnly(t, c)
		}
		u := e.helloUser()
		list := func(req string) protocol.ListCardsAck {
			t.Helper()
			u.Send(req)
			m, err := protocol.Decode([]byte(u.Recv()))
			if err != nil {
				t.Fatal(err)
			}
			return m.(protocol.ListCardsAck)
		}
		if ack := list(`{"msg_type": "list_cards"}`); len(ack.Cards) != 3 || ack.Total != 0 {
			t.Fatalf("plain list: %+v", ack)
		}
		if ack := list(`{"msg_type": "list_cards", "agent": "pi-1"}`); len(ack.Cards) != 2 || ack.Total != 2 {
			t.Fatalf("agent pi-1: %+v", ack)
		}
		if ack := list(`{"msg_type": "list_cards", "agent": "pi-1", "limit": 1}`); len(ack.Cards) != 1 || ack.Total != 2 || ack.Cards[0].Reader != "r0" {
			t.Fatalf("agent pi-1, limit 1: %+v", ack)
		}
		if ack := list(`{"msg_type": "list_cards", "id_type": "ATR", "id_str": "3B02"}`); len(ack.Cards) != 1 || ack.Cards[0].Agent != "pi-2" {
			t.Fatalf("by ATR: %+v", ack)
		}
		if ack := list(`{"msg_type": "list_cards", "reader": "nowhere"}`); len(ack.Cards) != 0 {
			t.Fatalf("no match: %+v", ack)
		}
		u.Send(`{"msg_type": "list_cards", "id_type": "colour", "id_str": "red"}`)
		expectError(t, u.Recv(), "list_cards: unknown id_type")
		// The raw frame of a filtered answer carries total.
		u.Send(`{"msg_type": "list_cards", "limit": 2}`)
		var raw map[string]any
		if err := json.Unmarshal([]byte(u.Recv()), &raw); err != nil || raw["total"] != 3.0 {
			t.Fatalf("limit 2: %v %v", raw, err)
		}
	})
}
