package server

import (
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsrc-go/wsrc/internal/testenv/wstest"
)

// The error probes of ../shared/protocol/error-probes.md, which record
// how pySim's server mishandles bad input, replayed against our server
// with our better answers asserted. Each test names its probe.

const (
	euiccATR   = "3b9f96801fc78031e073fe211b575352435653494da3"
	efICCID    = "989444000000115513f4"
	iccid      = "8949440000001155314"
	uiccIDs    = `{"ATR": "` + euiccATR + `", "ICCID": "` + iccid + `"}`
	rapdu6a82  = `{"response": "", "sw": "6a82", "msg_type": "r_apdu"}`
	stateReady = `{"new_state": "ready", "msg_type": "state_notification"}`
	stateAssoc = `{"new_state": "associated", "msg_type": "state_notification"}`
)

// P1: unknown ICCID, list_cards, unknown id_type. pySim: "No CardClient
// found for ..." for both. We: precise texts; and the card's network
// address is not shown to users by default.
func TestProbeP1SelectUnknown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{})
		e.uiccCard(euiccATR, efICCID)
		u := e.helloUser()
		u.Send(`{"msg_type":"select_card","id_type":"iccid","id_str":"1234"}`)
		expectJSON(t, u.Recv(), `{"message": "no card with ICCID 1234 is connected", "msg_type": "error"}`)
		u.Send(`{"msg_type":"list_cards"}`)
		expectJSON(t, u.Recv(), `{"cards": [{"remote_addr": ["0.0.0.0", 0], "identities": `+uiccIDs+`, "state": "ready"}], "msg_type": "list_cards_ack"}`)
		u.Send(`{"msg_type":"select_card","id_type":"foo","id_str":"1234"}`)
		expectError(t, u.Recv(), `unknown id_type "foo"`, "ATR, EID, ICCID, IMSI")
	})
}

// P2: unknown msg_type before select_card. pySim: no answer (the client
// hangs). We: an error, and the session goes on.
func TestProbeP2UnknownType(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{})
		u := e.helloUser()
		u.Send(`{"msg_type":"bogus"}`)
		expectJSON(t, u.Recv(), `{"message": "unknown msg_type \"bogus\"", "msg_type": "error"}`)
		u.Send(`{"msg_type":"list_cards"}`)
		expectJSON(t, u.Recv(), `{"cards": [], "msg_type": "list_cards_ack"}`)
	})
}

// P3: c_apdu (and reset_req) before select_card. pySim: no answer.
func TestProbeP3APDUBeforeSelect(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{})
		u := e.helloUser()
		u.Send(`{"msg_type":"c_apdu","command":"00a40004023f00"}`)
		expectJSON(t, u.Recv(), `{"message": "no card selected; send select_card first", "msg_type": "error"}`)
		u.Send(`{"msg_type":"reset_req"}`)
		expectError(t, u.Recv(), errNoCard)
	})
}

// P4: an ATR-only card selected by upper-case ATR; a second select_card
// on the same connection, an unknown msg_type, c_apdu, reset_req, close.
// pySim: the second select hangs the client (and notifies the card
// late), bogus gets no answer. We: the second select is refused (the
// first card stays selected), bogus gets an error, reset_resp carries the
// ATR.
func TestProbeP4ATROnlyCard(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{})
		c := e.atrCard("3bfeed04")
		u := e.helloUser()
		selectCard(t, u, "ATR", "3BFEED04", `{"ATR": "3bfeed04"}`)
		expectJSON(t, c.Recv(), stateAssoc)
		u.Send(`{"msg_type":"select_card","id_type":"atr","id_str":"3bfeed04"}`)
		expectJSON(t, u.Recv(), `{"message": "`+errAlreadyAssoc+`", "msg_type": "error"}`)
		u.Send(`{"msg_type":"bogus"}`)
		expectError(t, u.Recv(), `unknown msg_type "bogus"`)
		u.Send(`{"msg_type":"c_apdu","command":"00a40004023f00"}`)
		expectCAPDU(t, c, "00a40004023f00")
		c.Send(rapdu6a82)
		expectJSON(t, u.Recv(), rapdu6a82)
		u.Send(`{"msg_type":"reset_req"}`)
		expectJSON(t, c.Recv(), `{"msg_type": "reset_req"}`)
		c.Send(`{"atr": "3bfeed04", "msg_type": "reset_resp"}`)
		expectJSON(t, u.Recv(), `{"atr": "3bfeed04", "msg_type": "reset_resp"}`)
		u.Close(websocket.CloseNormalClosure, "")
		expectJSON(t, c.Recv(), stateReady)
		synctest.Wait()
		if p := c.Pending(); len(p) != 0 {
			t.Fatalf("card got more: %q", p)
		}
	})
}

// P5: a second user selects the card the first one holds. pySim: "No
// CardClient found". We: it is in use (without saying by whom).
func TestProbeP5InUse(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{})
		c := e.uiccCard(euiccATR, efICCID)
		u1 := e.helloUser()
		selectCard(t, u1, "iccid", iccid, uiccIDs)
		expectJSON(t, c.Recv(), stateAssoc)
		u2 := e.helloUser()
		u2.Send(`{"msg_type":"list_cards"}`)
		expectJSON(t, u2.Recv(), `{"cards": [{"remote_addr": ["0.0.0.0", 0], "identities": `+uiccIDs+`, "state": "associated"}], "msg_type": "list_cards_ack"}`)
		u2.Send(`{"msg_type":"select_card","id_type":"iccid","id_str":"` + iccid + `"}`)
		expectJSON(t, u2.Recv(), `{"message": "card ICCID `+iccid+` is in use by another user", "msg_type": "error"}`)
		// Once the first user leaves, the second gets it.
		u1.Close(websocket.CloseNormalClosure, "")
		expectJSON(t, c.Recv(), stateReady)
		selectCard(t, u2, "ICCID", iccid+"F", uiccIDs)
		expectJSON(t, c.Recv(), stateAssoc)
	})
}

// P6a-e: protocol violations in the first message. pySim: close 1011, no
// reason. We: an error message, then a close code with a reason.
func TestProbeP6FirstMessage(t *testing.T) {
	cases := []struct {
		name, port, send string
		code             int
		errText          string
	}{
		{"P6a card hello on user port", "user", `{"msg_type":"hello","client_type":"card","atr":"3b00"}`,
			websocket.ClosePolicyViolation, `wrong client_type "card": this is the user port (card agents connect to the card port)`},
		{"P6b not JSON", "user", `this is not json`,
			websocket.CloseProtocolError, "invalid first message: invalid message: not a JSON object"},
		{"P6c list_cards before hello", "user", `{"msg_type":"list_cards"}`,
			websocket.CloseProtocolError, "list_cards before hello"},
		{"P6d card hello without atr", "card", `{"msg_type":"hello","client_type":"card"}`,
			websocket.CloseProtocolError, `missing field "atr"`},
		{"P6e user hello on card port", "card", `{"msg_type":"hello","client_type":"user"}`,
			websocket.ClosePolicyViolation, `wrong client_type "user": this is the card port (users connect to the user port)`},
		{"card hello with empty atr", "card", `{"msg_type":"hello","client_type":"card","atr":""}`,
			websocket.CloseProtocolError, "empty atr"},
		{"unknown client_type", "user", `{"msg_type":"hello","client_type":"robot"}`,
			websocket.ClosePolicyViolation, `wrong client_type "robot"`},
		{"bad hex atr", "card", `{"msg_type":"hello","client_type":"card","atr":"3bzz"}`,
			websocket.CloseProtocolError, `field "atr": invalid hex digit 'z' at position 2`},
		{"r_apdu first", "card", `{"msg_type":"r_apdu","response":"","sw":"9000"}`,
			websocket.CloseProtocolError, "r_apdu before hello"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newEnv(t, Config{})
				var p *wstest.Peer
				if tc.port == "user" {
					p = e.user()
				} else {
					p = e.card("")
				}
				p.Send(tc.send)
				expectError(t, p.Recv(), tc.errText)
				code, reason := p.WaitClosed()
				if code != tc.code || reason == "" {
					t.Fatalf("closed with %d %q, want %d with a reason", code, reason, tc.code)
				}
			})
		})
	}
}

// P6f: the card agent answers the first identification c_apdu with an
// error. pySim: close 1011 and the card stays listed in state init
// forever (P10). We: the card is usable by its ATR.
func TestProbeP6fIdentificationRefused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{})
		c := e.card("")
		helloCard(t, c, "3bfeed06")
		c.Send(`{"msg_type":"error","message":"cannot"}`)
		expectJSON(t, c.Recv(), stateReady)
		u := e.helloUser()
		u.Send(`{"msg_type":"list_cards"}`)
		expectJSON(t, u.Recv(), `{"cards": [{"remote_addr": ["0.0.0.0", 0], "identities": {"ATR": "3bfeed06"}, "state": "ready"}], "msg_type": "list_cards_ack"}`)
		selectCard(t, u, "atr", "3bfeed06", `{"ATR": "3bfeed06"}`)
		expectJSON(t, c.Recv(), stateAssoc)
	})
}

// P7 and P8: the card agent leaves (close frame, or TCP dropped) while a
// user is associated but idle. pySim: the user's next request ends its
// connection with 1011. We: that request gets "card disconnected", the
// card is no longer listed, the session goes on.
func TestProbeP7P8AgentLeavesWhileIdle(t *testing.T) {
	for _, tc := range []struct {
		name  string
		leave func(*wstest.Peer)
		req   string
	}{
		{"P7 close 1000, c_apdu", func(p *wstest.Peer) { p.Close(websocket.CloseNormalClosure, "") }, `{"msg_type":"c_apdu","command":"00a40004023f00"}`},
		{"P8 TCP dropped, reset_req", (*wstest.Peer).Drop, `{"msg_type":"reset_req"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newEnv(t, Config{})
				c := e.atrCard("3bfeed07")
				u := e.helloUser()
				selectCard(t, u, "atr", "3bfeed07", `{"ATR": "3bfeed07"}`)
				expectJSON(t, c.Recv(), stateAssoc)
				tc.leave(c)
				synctest.Wait()
				u.Send(tc.req)
				expectError(t, u.Recv(), "card disconnected")
				u.Send(`{"msg_type":"list_cards"}`)
				expectJSON(t, u.Recv(), `{"cards": [], "msg_type": "list_cards_ack"}`)
				u.Send(tc.req)
				expectError(t, u.Recv(), errNoCard)
				// And the session can select another card.
				c2 := e.atrCard("3bfeed17")
				selectCard(t, u, "atr", "3bfeed17", `{"ATR": "3bfeed17"}`)
				expectJSON(t, c2.Recv(), stateAssoc)
			})
		})
	}
}

// P9: the card agent sends an unsolicited error, then the user sends a
// c_apdu. pySim: the error is taken as the answer (the user's connection
// ends with 1011) and the card's real answer is lost. We: the unsolicited
// error is logged and not answered (answering errors with errors could
// loop forever); the c_apdu gets the card's real answer.
func TestProbeP9UnsolicitedError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{})
		c := e.atrCard("3bfeed09")
		c.Send(`{"msg_type":"error","message":"spontaneous"}`)
		u := e.helloUser()
		selectCard(t, u, "atr", "3bfeed09", `{"ATR": "3bfeed09"}`)
		expectJSON(t, c.Recv(), stateAssoc)
		u.Send(`{"msg_type":"c_apdu","command":"00a40004023f00"}`)
		expectCAPDU(t, c, "00a40004023f00")
		c.Send(rapdu6a82)
		expectJSON(t, u.Recv(), rapdu6a82)
		synctest.Wait()
		if p := c.Pending(); len(p) != 0 {
			t.Fatalf("card got an answer to its unsolicited error: %q", p)
		}
	})
}

// An unsolicited r_apdu (the weakness behind P9): the card gets an error
// and the r_apdu is not taken as the answer to the next c_apdu.
func TestUnsolicitedRAPDU(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{})
		c := e.atrCard("3bfeed19")
		c.Send(`{"response": "dead", "sw": "9000", "msg_type": "r_apdu"}`)
		expectJSON(t, c.Recv(), `{"message": "unexpected r_apdu: no request is outstanding", "msg_type": "error"}`)
		c.Send(`{"atr": "3bfeed19", "msg_type": "reset_resp"}`)
		expectError(t, c.Recv(), "unexpected reset_resp: no request is outstanding")
		u := e.helloUser()
		selectCard(t, u, "atr", "3bfeed19", `{"ATR": "3bfeed19"}`)
		expectJSON(t, c.Recv(), stateAssoc)
		c.Send(`{"response": "beef", "sw": "9000", "msg_type": "r_apdu"}`)
		expectError(t, c.Recv(), "unexpected r_apdu")
		u.Send(`{"msg_type":"c_apdu","command":"00a40004023f00"}`)
		expectCAPDU(t, c, "00a40004023f00")
		c.Send(`{"response": "6220", "sw": "9000", "msg_type": "r_apdu"}`)
		expectJSON(t, u.Recv(), `{"response": "6220", "sw": "9000", "msg_type": "r_apdu"}`)
	})
}

// P10 and S2: no card is ever left in state init. A card agent that never
// answers its identification is dropped after IdentifyTimeout (pySim:
// 1011 without a reason, and listed as init for ever).
func TestProbeS2IdentificationTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{})
		c := e.card("")
		helloCard(t, c, "3bfeed0a")
		u := e.helloUser()
		u.Send(`{"msg_type":"list_cards"}`)
		expectJSON(t, u.Recv(), `{"cards": [{"remote_addr": ["0.0.0.0", 0], "identities": {"ATR": "3bfeed0a"}, "state": "init"}], "msg_type": "list_cards_ack"}`)
		u.Send(`{"msg_type":"select_card","id_type":"atr","id_str":"3bfeed0a"}`)
		expectError(t, u.Recv(), "card ATR 3bfeed0a is still being identified")
		start := time.Now()
		expectError(t, c.Recv(), "identification timed out: no answer within 30s")
		if d := time.Since(start); d != 30*time.Second {
			t.Errorf("dropped after %v, want 30s", d)
		}
		expectClosed(t, c, websocket.ClosePolicyViolation, "identification timed out")
		u.Send(`{"msg_type":"list_cards"}`) // P10: no leftovers
		expectJSON(t, u.Recv(), `{"cards": [], "msg_type": "list_cards_ack"}`)
	})
}

// Garbage during identification: the card is dropped with a reason.
func TestIdentificationGarbage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{})
		c := e.card("")
		helloCard(t, c, "3bfeed0b")
		c.Send(`{"msg_type":"r_apdu","response":"zz","sw":"9000"}`)
		expectError(t, c.Recv(), "identification failed: invalid answer to c_apdu "+cmdSelectISDR, "invalid hex digit")
		expectClosed(t, c, websocket.CloseProtocolError, "invalid answer during identification")
		synctest.Wait()
		if n := len(e.srv.Cards()); n != 0 {
			t.Fatalf("%d cards listed, want none", n)
		}
	})
}

// Unexpected messages during identification get an error and are not
// taken as answers.
func TestIdentificationUnexpected(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{})
		c := e.card("")
		helloCard(t, c, "3bfeed0c")
		c.Send(`{"msg_type":"disconnect_ack"}`)
		expectError(t, c.Recv(), "unexpected disconnect_ack during identification")
		c.Send(rapdu6a82)
		expectCAPDU(t, c, cmdSelectMF)
		c.Send(rapdu6a82)
		expectJSON(t, c.Recv(), stateReady)
	})
}

// S1: a user says hello and then nothing. pySim closes it after 10 s
// (code 1000, no reason). We keep it (keepalive pings prove the peer is
// there) and it can still list and select.
func TestProbeS1IdleUserStays(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{})
		u := e.helloUser()
		time.Sleep(5 * time.Minute)
		synctest.Wait()
		if code, _ := u.CloseStatus(); code != 0 {
			t.Fatalf("idle user closed with %d", code)
		}
		u.Send(`{"msg_type":"list_cards"}`)
		expectJSON(t, u.Recv(), `{"cards": [], "msg_type": "list_cards_ack"}`)
	})
}

// S3: a peer that stops answering pings is closed after PingInterval +
// PongTimeout, like pySim's websockets (1011 "keepalive ping timeout").
func TestProbeS3Keepalive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{})
		u := e.pipe(e.srv.UserHandler(), "", wstest.IgnorePings())
		u.Send(`{"msg_type": "hello", "client_type": "user"}`)
		expectJSON(t, u.Recv(), `{"msg_type": "hello_ack"}`)
		start := time.Now()
		expectClosed(t, u, websocket.CloseInternalServerErr, "keepalive ping timeout")
		if d := time.Since(start); d != 40*time.Second {
			t.Errorf("closed after %v, want 40s", d)
		}
		// Card agents too; the user learns at its next request.
		c := e.pipe(e.srv.CardHandler(), "", wstest.IgnorePings())
		helloCard(t, c, "3b01")
		identifyATROnly(t, c)
		u2 := e.helloUser()
		selectCard(t, u2, "atr", "3b01", `{"ATR": "3b01"}`)
		expectJSON(t, c.Recv(), stateAssoc)
		expectClosed(t, c, websocket.CloseInternalServerErr, "keepalive ping timeout")
		u2.Send(`{"msg_type":"reset_req"}`)
		expectError(t, u2.Recv(), "card disconnected: the card agent stopped answering keepalive pings")
	})
}

// A user busy waiting for a slow card does not read pongs meanwhile; it
// must not be taken for dead.
func TestKeepaliveDuringLongRequest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{})
		c := e.atrCard("3b02")
		u := e.helloUser()
		selectCard(t, u, "atr", "3b02", `{"ATR": "3b02"}`)
		expectJSON(t, c.Recv(), stateAssoc)
		time.Sleep(19 * time.Second) // just before a ping
		u.Send(`{"msg_type":"c_apdu","command":"80e2910000"}`)
		expectCAPDU(t, c, "80e2910000")
		time.Sleep(100 * time.Second) // eUICC crypto
		c.Send(`{"response": "", "sw": "9000", "msg_type": "r_apdu"}`)
		expectJSON(t, u.Recv(), `{"response": "", "sw": "9000", "msg_type": "r_apdu"}`)
		time.Sleep(time.Minute)
		u.Send(`{"msg_type":"list_cards"}`)
		if got := u.Recv(); !strings.Contains(got, "list_cards_ack") {
			t.Fatalf("got %s", got)
		}
	})
}

// Hello timeout on both ports.
func TestHelloTimeout(t *testing.T) {
	for _, port := range []string{"user", "card"} {
		t.Run(port, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newEnv(t, Config{})
				p := e.user()
				if port == "card" {
					p = e.card("")
				}
				start := time.Now()
				expectError(t, p.Recv(), "no hello within 10s")
				if d := time.Since(start); d != 10*time.Second {
					t.Errorf("after %v, want 10s", d)
				}
				expectClosed(t, p, websocket.ClosePolicyViolation, "no hello within 10s")
			})
		})
	}
}
