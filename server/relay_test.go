package server

import (
	"context"
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsrc-go/wsrc/internal/testenv/wstest"
)

// pair is a selected card with its user, ready for APDUs.
type pair struct{ card, user *wstest.Peer }

func (e *env) pair(atr string) pair {
	e.t.Helper()
	c := e.atrCard(atr)
	u := e.helloUser()
	selectCard(e.t, u, "atr", atr, `{"ATR": "`+atr+`"}`)
	expectJSON(e.t, c.Recv(), stateAssoc)
	return pair{c, u}
}

// roundTrip relays one APDU through p and checks it arrives both ways.
func (p pair) roundTrip(t *testing.T, cmd, resp string) {
	t.Helper()
	p.user.Send(`{"msg_type": "c_apdu", "command": "` + cmd + `"}`)
	expectCAPDU(t, p.card, cmd)
	p.card.Send(`{"response": "` + resp + `", "sw": "9000", "msg_type": "r_apdu"}`)
	expectJSON(t, p.user.Recv(), `{"response": "`+resp+`", "sw": "9000", "msg_type": "r_apdu"}`)
}

// A card agent vanishing mid-APDU: the waiting user gets an error at
// once, the card leaves the list, the session can select another card,
// and an unrelated pair is not disturbed.
func TestAgentVanishesMidAPDU(t *testing.T) {
	for _, tc := range []struct {
		name  string
		leave func(*wstest.Peer)
		why   string
	}{
		{"TCP dropped", (*wstest.Peer).Drop, "card disconnected: the card agent's connection was lost"},
		{"clean close", func(p *wstest.Peer) { p.Close(websocket.CloseNormalClosure, "bye") }, "card disconnected: the card agent closed the connection"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newEnv(t, Config{})
				other := e.pair("3b0000")
				p := e.pair("3b0001")
				p.user.Send(`{"msg_type": "c_apdu", "command": "00b0000000"}`)
				expectCAPDU(t, p.card, "00b0000000")
				start := time.Now()
				tc.leave(p.card)
				expectJSON(t, p.user.Recv(), `{"message": "`+tc.why+`", "msg_type": "error"}`)
				if d := time.Since(start); d != 0 {
					t.Errorf("user told after %v, want at once", d)
				}
				p.user.Send(`{"msg_type": "list_cards"}`)
				if got := p.user.Recv(); strings.Contains(got, "3b0001") || !strings.Contains(got, "3b0000") {
					t.Fatalf("list after the loss: %s", got)
				}
				other.roundTrip(t, "00a40004023f00", "6220")
				c3 := e.atrCard("3b0002")
				selectCard(t, p.user, "atr", "3b0002", `{"ATR": "3b0002"}`)
				expectJSON(t, c3.Recv(), stateAssoc)
				pair{c3, p.user}.roundTrip(t, "00b0000001", "01")
				other.roundTrip(t, "00b0000002", "02")
			})
		})
	}
}

// A card agent that takes longer than RequestTimeout is disconnected, and
// the user told so.
func TestRequestTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{RequestTimeout: 5 * time.Second})
		p := e.pair("3b0003")
		p.user.Send(`{"msg_type": "reset_req"}`)
		expectJSON(t, p.card.Recv(), `{"msg_type": "reset_req"}`)
		start := time.Now()
		expectJSON(t, p.user.Recv(), `{"message": "card disconnected: no reply to reset_req within 5s", "msg_type": "error"}`)
		if d := time.Since(start); d != 5*time.Second {
			t.Errorf("timed out after %v, want 5s", d)
		}
		expectError(t, p.card.Recv(), "no reply to reset_req within 5s; closing the connection")
		expectClosed(t, p.card, websocket.ClosePolicyViolation, "no reply to reset_req within 5s")
		p.user.Send(`{"msg_type": "reset_req"}`)
		expectError(t, p.user.Recv(), errNoCard)
		synctest.Wait() // the card's goroutine has ended
		if n := len(e.srv.Cards()); n != 0 {
			t.Fatalf("%d cards listed, want none", n)
		}
	})
}

// The default request timeout is long enough for slow eUICC operations.
func TestRequestTimeoutDefault(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{})
		p := e.pair("3b0004")
		p.user.Send(`{"msg_type": "c_apdu", "command": "80e2910000"}`)
		expectCAPDU(t, p.card, "80e2910000")
		time.Sleep(119 * time.Second)
		p.card.Send(`{"response": "", "sw": "9000", "msg_type": "r_apdu"}`)
		expectJSON(t, p.user.Recv(), `{"response": "", "sw": "9000", "msg_type": "r_apdu"}`)
		p.user.Send(`{"msg_type": "c_apdu", "command": "80e2910000"}`)
		expectCAPDU(t, p.card, "80e2910000")
		expectError(t, p.user.Recv(), "no reply to c_apdu within 2m0s")
	})
}

// A card agent answering a c_apdu with error: the user gets its text and
// stays associated.
func TestCardErrorReply(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{})
		p := e.pair("3b0005")
		p.user.Send(`{"msg_type": "c_apdu", "command": "00b0000000"}`)
		expectCAPDU(t, p.card, "00b0000000")
		p.card.Send(`{"msg_type": "error", "message": "reader: card removed"}`)
		expectJSON(t, p.user.Recv(), `{"message": "card agent error: reader: card removed", "msg_type": "error"}`)
		p.roundTrip(t, "00b0000000", "aa")
	})
}

// Replies that do not fit: an r_apdu while a reset_resp is awaited is
// refused (and not delivered); a broken r_apdu ends the request with an
// error for the user.
func TestMismatchedAndInvalidReplies(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{})
		p := e.pair("3b0006")
		p.user.Send(`{"msg_type": "reset_req"}`)
		expectJSON(t, p.card.Recv(), `{"msg_type": "reset_req"}`)
		p.card.Send(rapdu6a82)
		expectJSON(t, p.card.Recv(), `{"message": "unexpected r_apdu: the server is waiting for reset_resp", "msg_type": "error"}`)
		p.card.Send(`{"atr": "3b0016", "msg_type": "reset_resp"}`)
		expectJSON(t, p.user.Recv(), `{"atr": "3b0016", "msg_type": "reset_resp"}`)
		// The new ATR is the card's identity now, as in pySim.
		u2 := e.helloUser()
		u2.Send(`{"msg_type": "list_cards"}`)
		expectJSON(t, u2.Recv(), `{"cards": [{"remote_addr": ["0.0.0.0", 0], "identities": {"ATR": "3b0016"}, "state": "associated"}], "msg_type": "list_cards_ack"}`)

		p.user.Send(`{"msg_type": "c_apdu", "command": "00b0000000"}`)
		expectCAPDU(t, p.card, "00b0000000")
		p.card.Send(`{"response": "zz", "sw": "9000", "msg_type": "r_apdu"}`)
		expectError(t, p.user.Recv(), "card agent sent an invalid reply", `field "response"`)
		expectError(t, p.card.Recv(), "invalid r_apdu message")
		// An unknown msg_type from the card is not a reply.
		p.user.Send(`{"msg_type": "c_apdu", "command": "00b0000001"}`)
		expectCAPDU(t, p.card, "00b0000001")
		p.card.Send(`{"msg_type": "status", "battery": 12}`)
		expectJSON(t, p.card.Recv(), `{"message": "unknown msg_type \"status\"", "msg_type": "error"}`)
		p.card.Send(rapdu6a82)
		expectJSON(t, p.user.Recv(), rapdu6a82)
		// Messages a card agent has no business sending.
		for _, m := range []string{`{"msg_type": "list_cards"}`, `{"msg_type": "c_apdu", "command": "00b00000"}`} {
			p.card.Send(m)
			expectError(t, p.card.Recv(), "from a card agent")
		}
		p.card.Send(`{"msg_type": "hello", "client_type": "card", "atr": "3b"}`)
		expectError(t, p.card.Recv(), "duplicate hello")
		p.roundTrip(t, "00b0000002", "bb")
	})
}

// User protocol violations after hello get precise errors and leave the
// connection open.
func TestUserViolations(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{})
		p := e.pair("3b0007")
		u := p.user
		cases := []struct{ send, want string }{
			{`{"msg_type": "hello", "client_type": "user"}`, "duplicate hello"},
			{`{"msg_type": "r_apdu", "response": "", "sw": "9000"}`, "unexpected r_apdu from a user"},
			{`{"msg_type": "state_notification", "new_state": "ready"}`, "unexpected state_notification from a user"},
			{`{"msg_type": "c_apdu", "command": "00a4zz"}`, `invalid c_apdu message: field "command": invalid hex digit 'z' at position 4`},
			{`{"msg_type": "c_apdu", "command": "00a"}`, `odd number of hex digits`},
			{`{"msg_type": "c_apdu", "command": "00a4"}`, `at least 4 bytes`},
			{`{"msg_type": "c_apdu"}`, `missing field "command"`},
			{`{"msg_type": "select_card", "id_type": "iccid"}`, `missing field "id_str"`},
			{`{"msg_type": "select_card", "id_type": "iccid", "id_str": ""}`, `id_str is empty`},
			{`{"msg_type": 7}`, `"msg_type" must be a string`},
			{`{"command": "00"}`, `missing field "msg_type"`},
			{`not json`, `not a JSON object`},
			{`{"msg_type": "c_apdu", `, `malformed JSON`},
		}
		for _, tc := range cases {
			u.Send(tc.send)
			expectError(t, u.Recv(), tc.want)
		}
		if err := u.Conn.WriteMessage(websocket.BinaryMessage, []byte{1, 2}); err != nil {
			t.Fatal(err)
		}
		expectError(t, u.Recv(), "binary frames are not supported")
		u.Send(`{"msg_type": "error", "message": "whatever"}`) // not answered
		p.roundTrip(t, "00b0000000", "cc")
	})
}

// Frames over MaxFrameSize end the connection with 1009 and a reason.
func TestOversizedFrame(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{MaxFrameSize: 1000})
		p := e.pair("3b0008")
		p.roundTrip(t, strings.Repeat("00", 480), "") // 980 bytes of JSON: fine
		big := `{"msg_type": "c_apdu", "command": "` + strings.Repeat("00", 600) + `"}`
		p.user.Send(big)
		expectError(t, p.user.Recv(), "message too big: the limit is 1000 bytes")
		expectClosed(t, p.user, websocket.CloseMessageTooBig, "message too big")
		expectJSON(t, p.card.Recv(), stateReady) // the user is gone
		// Before hello too, and on the card port.
		c := e.card("")
		c.Send(big)
		expectError(t, c.Recv(), "message too big")
		expectClosed(t, c, websocket.CloseMessageTooBig, "message too big")
		p.card.Send(`{"response": "` + strings.Repeat("00", 600) + `", "sw": "9000", "msg_type": "r_apdu"}`)
		expectError(t, p.card.Recv(), "message too big")
		expectClosed(t, p.card, websocket.CloseMessageTooBig, "message too big")
	})
}

// Extended-length APDUs fit the default frame limit.
func TestLargeAPDU(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{})
		p := e.pair("3b0009")
		p.roundTrip(t, "00d60000"+"00ffff"+strings.Repeat("ab", 65535), strings.Repeat("cd", 65536))
	})
}

// Selection: any identity key in any case, values in any case, ICCIDs
// with or without their f padding, the first ready card of several.
func TestSelectMatching(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{})
		// EF.ICCID of a 19-digit ICCID, f-padded.
		c := e.uiccCard("3b00", "980000000000000000f0")
		_ = c
		u := e.helloUser()
		ids := `{"ATR": "3b00", "ICCID": "8900000000000000000"}`
		selectCard(t, u, "Iccid", "8900000000000000000F", ids)
		u.Close(websocket.CloseNormalClosure, "")
		expectJSON(t, c.Recv(), stateAssoc)
		expectJSON(t, c.Recv(), stateReady)
		u = e.helloUser()
		selectCard(t, u, "atr", "3B00", ids)
		expectJSON(t, c.Recv(), stateAssoc)
		// Two cards with one ATR: the second user gets the other one.
		c2 := e.atrCard("3b00")
		u2 := e.helloUser()
		selectCard(t, u2, "ATR", "3b00", `{"ATR": "3b00"}`)
		expectJSON(t, c2.Recv(), stateAssoc)
		u3 := e.helloUser()
		u3.Send(`{"msg_type": "select_card", "id_type": "atr", "id_str": "3b00"}`)
		expectError(t, u3.Recv(), "card ATR 3b00 is in use by another user")
		u3.Send(`{"msg_type": "select_card", "id_type": "imsi", "id_str": "001010123456789"}`)
		expectError(t, u3.Recv(), "no card with IMSI 001010123456789 is connected")
		u3.Send(`{"msg_type": "select_card", "id_type": "eid", "id_str": "89049032123451234512345678901235"}`)
		expectError(t, u3.Recv(), "no card with EID")
	})
}

// An eUICC (transcript section 1) is selectable by EID in upper case.
func TestSelectByEID(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{})
		c := e.card("")
		c.Send(`{"msg_type":"hello","client_type":"card","atr":"3b01","agent":"pi4","reader":"Gemalto 0","version":"1.0"}`)
		expectJSON(t, c.Recv(), `{"msg_type": "hello_ack"}`)
		expectCAPDU(t, c, cmdSelectISDR)
		c.Send(`{"response": "", "sw": "9000", "msg_type": "r_apdu"}`)
		expectCAPDU(t, c, cmdGetEID)
		c.Send(`{"response": "bf3e125a1089049032123451234512345678901235", "sw": "9000", "msg_type": "r_apdu"}`)
		expectCAPDU(t, c, cmdSelectMF)
		c.Send(rapdu6a82)
		expectJSON(t, c.Recv(), stateReady)
		u := e.helloUser()
		u.Send(`{"msg_type": "list_cards"}`)
		expectJSON(t, u.Recv(), `{"cards": [{"remote_addr": ["0.0.0.0", 0], "identities": {"ATR": "3b01", "EID": "89049032123451234512345678901235"}, "state": "ready", "agent": "pi4", "reader": "Gemalto 0"}], "msg_type": "list_cards_ack"}`)
		selectCard(t, u, "EID", "89049032123451234512345678901235", `{"ATR": "3b01", "EID": "89049032123451234512345678901235"}`)
	})
}

// Shutdown closes every connection with 1001 and a reason, waits for
// them, and refuses new ones.
func TestShutdown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{})
		p := e.pair("3b000a")
		idle := e.card("")
		p.user.Send(`{"msg_type": "c_apdu", "command": "00b0000000"}`)
		expectCAPDU(t, p.card, "00b0000000")
		if err := e.srv.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		for _, peer := range []*wstest.Peer{p.card, idle} {
			expectClosed(t, peer, websocket.CloseGoingAway, "server shutting down")
		}
		// The waiting user may be told its card went away before its own
		// close frame; either way it ends with 1001.
		if pending := p.user.Pending(); len(pending) > 0 {
			expectError(t, pending[0], "card disconnected: server shutting down")
		}
		expectClosed(t, p.user, websocket.CloseGoingAway, "server shutting down")
		_, err := wstest.DialPipe(e.srv.UserHandler(), "127.0.0.1:9")
		if err == nil || !strings.Contains(err.Error(), "503") {
			t.Fatalf("dial after shutdown: %v, want 503", err)
		}
	})
}

// Shutdown gives up waiting when its context ends, and still leaves no
// goroutine behind.
func TestShutdownContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{})
		// A raw peer that never reads: the close frame cannot even be
		// delivered over the unbuffered pipe.
		raw, err := wstest.DialPipe(e.srv.UserHandler(), "127.0.0.1:9")
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		if err := e.srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Shutdown: %v, want deadline exceeded", err)
		}
	})
}

// A user that stops reading is disconnected after WriteTimeout; other
// sessions go on meanwhile.
func TestSlowUser(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{})
		other := e.pair("3b000b")
		c := e.atrCard("3b000c")
		raw, err := wstest.DialPipe(e.srv.UserHandler(), "127.0.0.1:9")
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		send := func(s string) {
			if err := raw.WriteMessage(websocket.TextMessage, []byte(s)); err != nil {
				t.Fatal(err)
			}
		}
		// hello: the hello_ack cannot be delivered (nobody reads).
		send(`{"msg_type": "hello", "client_type": "user"}`)
		start := time.Now()
		other.roundTrip(t, "00b0000000", "01")
		if d := time.Since(start); d != 0 {
			t.Errorf("other session delayed by %v", d)
		}
		time.Sleep(DefaultWriteTimeout)
		synctest.Wait()
		if err := raw.WriteMessage(websocket.TextMessage, []byte(`{"msg_type": "list_cards"}`)); err == nil {
			t.Fatal("slow user still connected after the write timeout")
		}
		other.roundTrip(t, "00b0000001", "02")
		_ = c
	})
}

// A card agent that stops reading is disconnected after WriteTimeout;
// its user learns at once, others go on.
func TestSlowCard(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{})
		other := e.pair("3b000d")
		raw, err := wstest.DialPipe(e.srv.CardHandler(), "127.0.0.1:9")
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		if err := raw.WriteMessage(websocket.TextMessage, []byte(`{"msg_type":"hello","client_type":"card","atr":"3b000e"}`)); err != nil {
			t.Fatal(err)
		}
		// hello_ack cannot be delivered: after WriteTimeout the card is
		// dropped, never having been listed as more than init.
		other.roundTrip(t, "00b0000000", "01")
		time.Sleep(DefaultWriteTimeout)
		synctest.Wait()
		if n := len(e.srv.Cards()); n != 1 {
			t.Fatalf("%d cards listed, want 1", n)
		}
		other.roundTrip(t, "00b0000001", "02")
	})
}

// A client that does not wait for replies (pySim's clients always do)
// still gets its replies one by one, in order: the next request goes to
// the card only once the previous one is answered.
func TestPipelinedRequests(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{})
		p := e.pair("3b0010")
		// From a goroutine: over the unbuffered pipe each send waits for
		// the server to read it, and the server reads the third only
		// after the first is answered.
		sent := make(chan error, 1)
		go func() {
			var err error
			for _, m := range []string{`{"msg_type": "c_apdu", "command": "00b0000001"}`, `{"msg_type": "bogus"}`,
				`{"msg_type": "c_apdu", "command": "00b0000002"}`, `{"msg_type": "list_cards"}`} {
				if err == nil {
					err = p.user.TrySend(m)
				}
			}
			sent <- err
		}()
		expectCAPDU(t, p.card, "00b0000001")
		synctest.Wait()
		if got := p.card.Pending(); len(got) != 0 {
			t.Fatalf("card got %q before answering the first request", got)
		}
		if got := p.user.Pending(); len(got) != 0 {
			t.Fatalf("user got %q before the first reply", got)
		}
		p.card.Send(`{"response": "01", "sw": "9000", "msg_type": "r_apdu"}`)
		expectJSON(t, p.user.Recv(), `{"response": "01", "sw": "9000", "msg_type": "r_apdu"}`)
		expectError(t, p.user.Recv(), `unknown msg_type "bogus"`)
		expectCAPDU(t, p.card, "00b0000002")
		p.card.Send(`{"response": "02", "sw": "9000", "msg_type": "r_apdu"}`)
		expectJSON(t, p.user.Recv(), `{"response": "02", "sw": "9000", "msg_type": "r_apdu"}`)
		if got := p.user.Recv(); !strings.Contains(got, "list_cards_ack") {
			t.Fatalf("got %s, want list_cards_ack", got)
		}
		if err := <-sent; err != nil {
			t.Fatal(err)
		}
	})
}

// A user that leaves with a request in flight: the card becomes ready
// only once it has answered (its late reply must not reach the next
// user), or is dropped when it never answers.
func TestUserLeavesMidRequest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{RequestTimeout: 30 * time.Second})
		p := e.pair("3b0011")
		p.user.Send(`{"msg_type": "c_apdu", "command": "00b0000001"}`)
		expectCAPDU(t, p.card, "00b0000001")
		p.user.Drop()
		synctest.Wait()
		u2 := e.helloUser()
		u2.Send(`{"msg_type": "select_card", "id_type": "atr", "id_str": "3b0011"}`)
		expectError(t, u2.Recv(), "in use by another user")
		if got := p.card.Pending(); len(got) != 0 {
			t.Fatalf("card got %q before answering", got)
		}
		p.card.Send(`{"response": "01", "sw": "9000", "msg_type": "r_apdu"}`)
		expectJSON(t, p.card.Recv(), stateReady)
		selectCard(t, u2, "atr", "3b0011", `{"ATR": "3b0011"}`)
		expectJSON(t, p.card.Recv(), stateAssoc)

		// And when the card never answers: dropped at the timeout.
		u2.Send(`{"msg_type": "reset_req"}`)
		expectJSON(t, p.card.Recv(), `{"msg_type": "reset_req"}`)
		u2.Close(websocket.CloseNormalClosure, "")
		expectError(t, p.card.Recv(), "no reply to reset_req within 30s")
		expectClosed(t, p.card, websocket.ClosePolicyViolation, "no reply to reset_req within 30s")
	})
}
