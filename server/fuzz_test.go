package server

import (
	"testing"
	"testing/synctest"

	"github.com/gorilla/websocket"
)

var fuzzSeeds = []string{
	`{"msg_type": "hello", "client_type": "user"}`,
	`{"msg_type": "list_cards"}`,
	`{"msg_type": "select_card", "id_type": "atr", "id_str": "3b00"}`,
	`{"msg_type": "c_apdu", "command": "00a40004023f00"}`,
	`{"msg_type": "c_apdu", "command": "00a4zz"}`,
	`{"msg_type": "reset_req"}`,
	`{"response": "", "sw": "6a82", "msg_type": "r_apdu"}`,
	`{"atr": "3b00", "msg_type": "reset_resp"}`,
	`{"msg_type": "error", "message": "x"}`,
	`{"msg_type": "bogus"}`,
	`{"msg_type": 7}`,
	`not json`,
	`{"msg_type": "c_apdu", `,
	`{"msg_type":"select_card","id_type":"ICCID","id_str":"8949440000001155314F"}`,
}

// FuzzPeerMessage sends one arbitrary frame from a user (card=false) or a
// card agent that is associated with a user, and checks that the server
// stays sane: the connection stays open and usable, every answer is an
// orderly message, and the user can still relay an APDU.
func FuzzPeerMessage(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(false, []byte(s))
		f.Add(true, []byte(s))
	}
	f.Fuzz(func(t *testing.T, fromCard bool, data []byte) {
		synctest.Test(t, func(t *testing.T) {
			e := newEnv(t, Config{})
			p := e.pair("3b00")
			from := p.user
			if fromCard {
				from = p.card
			}
			if err := from.Conn.WriteMessage(websocket.TextMessage, data); err != nil {
				t.Fatal(err)
			}
			synctest.Wait()
			for _, peer := range []struct {
				name  string
				peer  []string
				allow map[string]bool
			}{
				{"user", p.user.Pending(), map[string]bool{"error": true, "list_cards_ack": true, "select_card_ack": true}},
				{"card", p.card.Pending(), map[string]bool{"error": true, "c_apdu": true, "reset_req": true}},
			} {
				for _, got := range peer.peer {
					m := decodeObj(t, got)
					if typ, _ := m["msg_type"].(string); !peer.allow[typ] {
						t.Fatalf("%s got %s after %q", peer.name, got, data)
					}
					// A relayed request: answer it, so the pair is idle again.
					switch m["msg_type"] {
					case "c_apdu":
						p.card.Send(rapdu6a82)
						expectJSON(t, p.user.Recv(), rapdu6a82)
					case "reset_req":
						p.card.Send(`{"atr": "3b00", "msg_type": "reset_resp"}`)
						expectJSON(t, p.user.Recv(), `{"atr": "3b00", "msg_type": "reset_resp"}`)
					}
				}
			}
			if code, _ := p.user.CloseStatus(); code != 0 {
				t.Fatalf("user closed (%d) after %q", code, data)
			}
			if code, _ := p.card.CloseStatus(); code != 0 {
				t.Fatalf("card closed (%d) after %q", code, data)
			}
			p.roundTrip(t, "00b0000000", "aa")
		})
	})
}
