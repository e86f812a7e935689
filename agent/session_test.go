package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/gorilla/websocket"

	"github.com/wsrc-go/wsrc/agent/agenttest"
	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/card/sim"
	"github.com/wsrc-go/wsrc/protocol"
)

func newTestSession(srv *agenttest.Server, c card.Card) *Session {
	return NewSession(Config{Server: srv.URL(), Agent: "testhost", Logger: testLogger(), Timing: fastTiming}, c, "reader 0")
}

func expectError(t *testing.T, conn *agenttest.Conn, contains string) {
	t.Helper()
	m := conn.Read()
	e, ok := m.(protocol.Error)
	if !ok {
		t.Fatalf("got %#v, want an error message containing %q", m, contains)
	}
	if !strings.Contains(e.Message, contains) {
		t.Fatalf("error message %q does not contain %q", e.Message, contains)
	}
}

// malformedFrames are bad frames from a server and what the agent's error
// message must say about each.
var malformedFrames = []struct {
	frame string
	want  string
}{
	{`not json`, "not a JSON object"},
	{`{"msg_type": "c_apdu", "command": "00a4"`, "malformed JSON"},
	{`{"command": "00a40000023f00"}`, `missing field "msg_type"`},
	{`{"msg_type": 7}`, `"msg_type" must be a string`},
	{`{"msg_type": "frobnicate"}`, `message type "frobnicate" is not supported`},
	{`{"msg_type": "c_apdu"}`, `invalid c_apdu message: missing field "command"`},
	{`{"msg_type": "c_apdu", "command": "00a4000"}`, "odd number of hex digits"},
	{`{"msg_type": "c_apdu", "command": "zz"}`, "invalid hex digit"},
	{`{"msg_type": "c_apdu", "command": "00a4"}`, "at least 4 bytes"},
	{`{"msg_type": "list_cards"}`, `message type "list_cards" is not supported`},
	{`{"msg_type": "hello_ack"}`, `message type "hello_ack" is not supported`},
	{`{"msg_type": "r_apdu", "response": "", "sw": "9000"}`, `message type "r_apdu" is not supported`},
	{`[]`, "not a JSON object"},
	{``, "not a JSON object"},
}

// TestMalformedFrames: every bad frame gets an error message with a
// precise reason, and the session carries on.
func TestMalformedFrames(t *testing.T) {
	srv := agenttest.NewServer(t)
	start(t, newTestSession(srv, sim.New(sim.Config{})).Run)
	conn := srv.Accept()
	conn.Hello()

	for _, tc := range malformedFrames {
		conn.SendRaw([]byte(tc.frame))
		expectError(t, conn, tc.want)
	}
	// A binary frame.
	if err := conn.WS().WriteMessage(websocket.BinaryMessage, []byte{1, 2}); err != nil {
		t.Fatal(err)
	}
	expectError(t, conn, "binary frames are not supported")
	// An error from the server gets no answer; state_notification and
	// print neither: the next answer is the r_apdu.
	conn.Send(protocol.Error{Message: "you are weird"})
	conn.Send(protocol.StateNotification{NewState: protocol.StateReady})
	conn.Send(protocol.Print{Message: "hello card"})
	r := conn.Transmit([]byte{0x00, 0xa4, 0x00, 0x00, 0x02, 0x3f, 0x00})
	if r.SW != 0x9000 || len(r.Response) == 0 {
		t.Errorf("SELECT MF after bad frames: %x %04x", r.Response, r.SW)
	}
}

// TestT0Follow: on a T=0 card the agent fetches the whole response (61xx
// → GET RESPONSE) before it answers, as pySim's card client does.
func TestT0Follow(t *testing.T) {
	srv := agenttest.NewServer(t)
	c := sim.New(sim.Config{T0GetResponse: true})
	start(t, newTestSession(srv, c).Run)
	conn := srv.Accept()
	conn.Hello()
	r := conn.Transmit([]byte{0x00, 0xa4, 0x00, 0x04, 0x02, 0x3f, 0x00})
	want := sim.New(sim.Config{}).Process([]byte{0x00, 0xa4, 0x00, 0x04, 0x02, 0x3f, 0x00})
	if got := append(r.Response, byte(r.SW>>8), byte(r.SW)); !bytes.Equal(got, want) {
		t.Errorf("SELECT MF on T=0 = %x, want %x", got, want)
	}
}

// TestReset: reset_req → warm reset → reset_resp with the new ATR; a reset
// that fails is reported and the session goes on.
func TestReset(t *testing.T) {
	srv := agenttest.NewServer(t)
	fc := newFakeCard()
	var kinds []card.ResetKind
	fc.reset = func(ctx context.Context) ([]byte, error) {
		kinds = append(kinds, card.WarmReset)
		if len(kinds) == 2 {
			return nil, card.ErrMute
		}
		return []byte{0x3b, 0x01}, nil
	}
	start(t, newTestSession(srv, fc).Run)
	conn := srv.Accept()
	conn.Hello()
	conn.Send(protocol.ResetReq{})
	m := conn.Read()
	if rr, ok := m.(protocol.ResetResp); !ok || !bytes.Equal(rr.ATR, []byte{0x3b, 0x01}) {
		t.Fatalf("reset_req answered with %#v", m)
	}
	conn.Send(protocol.ResetReq{})
	expectError(t, conn, "resetting card: card mute")
	conn.Transmit([]byte{0, 0xb0, 0, 0, 0})
}

// TestCardError: a transmit error other than removal is reported with
// its reason and the session carries on.
func TestCardError(t *testing.T) {
	srv := agenttest.NewServer(t)
	fc := newFakeCard()
	fc.setTransmit(func(ctx context.Context, cmd []byte) ([]byte, error) {
		switch cmd[1] {
		case 0x01:
			return nil, fmt.Errorf("reader says: %w", card.ErrMute)
		case 0x02:
			return []byte{0x90}, nil
		}
		return []byte{0xab, 0x90, 0x00}, nil
	})
	start(t, newTestSession(srv, fc).Run)
	conn := srv.Accept()
	conn.Hello()
	conn.Send(protocol.CAPDU{Command: []byte{0, 1, 0, 0}})
	expectError(t, conn, "transmitting APDU: reader says: card mute")
	conn.Send(protocol.CAPDU{Command: []byte{0, 2, 0, 0}})
	expectError(t, conn, "transmitting APDU: response APDU shorter")
	if r := conn.Transmit([]byte{0, 3, 0, 0}); r.SW != 0x9000 || !bytes.Equal(r.Response, []byte{0xab}) {
		t.Errorf("r_apdu = %x %04x", r.Response, r.SW)
	}
}

// TestCardResetByOtherApplication: a card that another application
// sharing it reset (PC/SC shared mode; the backend has acknowledged the
// reset) is not a removal: the user learns of it from the error message,
// and the session carries on with the freshly reset card.
func TestCardResetByOtherApplication(t *testing.T) {
	srv := agenttest.NewServer(t)
	fc := newFakeCard()
	reset := true
	fc.setTransmit(func(ctx context.Context, cmd []byte) ([]byte, error) {
		if reset {
			reset = false
			return nil, fmt.Errorf(`SCardTransmit on reader "reader 0": SCARD_W_RESET_CARD (0x80100068): %w`, card.ErrReset)
		}
		return []byte{0x90, 0x00}, nil
	})
	r := start(t, newTestSession(srv, fc).Run)
	conn := srv.Accept()
	conn.Hello()
	conn.Send(protocol.CAPDU{Command: []byte{0, 0x20, 0, 1, 0}})
	expectError(t, conn, `transmitting APDU: SCardTransmit on reader "reader 0": SCARD_W_RESET_CARD (0x80100068): card reset by another application`)
	// Same connection: the session survived.
	if rsp := conn.Transmit([]byte{0, 0xa4, 0, 0, 2, 0x3f, 0x00}); rsp.SW != 0x9000 {
		t.Errorf("SELECT MF after the reset: SW %04x", rsp.SW)
	}
	select {
	case <-r.done:
		t.Fatalf("Run ended: %v", r.err)
	default:
	}
	if fc.isClosed() {
		t.Error("Session closed the card")
	}
}

// TestCardRemoved: a removed card ends the session with an error message
// and a close; Run returns card.ErrRemoved and does not reconnect.
func TestCardRemoved(t *testing.T) {
	srv := agenttest.NewServer(t)
	fc := newFakeCard()
	fc.setTransmit(func(ctx context.Context, cmd []byte) ([]byte, error) {
		return nil, fmt.Errorf("reader 0: %w", card.ErrRemoved)
	})
	r := start(t, newTestSession(srv, fc).Run)
	conn := srv.Accept()
	conn.Hello()
	conn.Send(protocol.CAPDU{Command: []byte{0, 0xa4, 0, 0}})
	expectError(t, conn, "transmitting APDU: reader 0: card removed")
	if code, _ := conn.ExpectClose(); code != websocket.CloseGoingAway {
		t.Errorf("close code %d, want 1001", code)
	}
	if err := r.wait(t); !errors.Is(err, card.ErrRemoved) {
		t.Errorf("Run = %v, want card.ErrRemoved", err)
	}
	if fc.isClosed() {
		t.Error("Session closed the card; its owner must")
	}
}

// TestDisconnect: disconnect → disconnect_ack, close 1000, and a new
// connection only after DisconnectHoldoff.
func TestDisconnect(t *testing.T) {
	srv := agenttest.NewServer(t)
	s := newTestSession(srv, newFakeCard())
	s.timing.DisconnectHoldoff = 1 // ns: the hold-off itself is tested with synctest
	r := start(t, s.Run)
	conn := srv.Accept()
	conn.Hello()
	conn.Send(protocol.Disconnect{})
	if m := conn.Read(); m.MsgType() != protocol.TypeDisconnectAck {
		t.Fatalf("disconnect answered with %#v", m)
	}
	if code, _ := conn.ExpectClose(); code != websocket.CloseNormalClosure {
		t.Errorf("close code %d, want 1000", code)
	}
	conn = srv.Accept()
	conn.Hello()
	r.cancel()
	if code, _ := conn.ExpectClose(); code != websocket.CloseGoingAway {
		t.Errorf("close code on shutdown %d, want 1001", code)
	}
	if err := r.wait(t); err != nil {
		t.Errorf("Run = %v", err)
	}
}

// TestServerVanishesMidAPDU: the server drops the connection while the
// card is working; the agent finishes the APDU, notices, and reconnects.
func TestServerVanishesMidAPDU(t *testing.T) {
	srv := agenttest.NewServer(t)
	fc := newFakeCard()
	entered := make(chan struct{})
	release := make(chan struct{})
	fc.setTransmit(func(ctx context.Context, cmd []byte) ([]byte, error) {
		if cmd[1] == 0x55 {
			close(entered)
			<-release
		}
		return []byte{0x90, 0x00}, nil
	})
	start(t, newTestSession(srv, fc).Run)
	conn := srv.Accept()
	conn.Hello()
	conn.Send(protocol.CAPDU{Command: []byte{0, 0x55, 0, 0}})
	<-entered
	conn.Close()
	close(release)

	conn = srv.Accept()
	h := conn.Hello()
	if !bytes.Equal(h.ATR, fc.ATR()) {
		t.Errorf("hello ATR %x", h.ATR)
	}
	if r := conn.Transmit([]byte{0, 0x66, 0, 0}); r.SW != 0x9000 {
		t.Errorf("SW %04x", r.SW)
	}
}

// TestServerRestart: the server goes away (the port refuses connections)
// and comes back on the same address; the agent reconnects by itself.
func TestServerRestart(t *testing.T) {
	srv := agenttest.NewServer(t)
	addr := srv.Addr()
	start(t, newTestSession(srv, sim.New(sim.Config{})).Run)
	conn := srv.Accept()
	conn.Hello()
	conn.Transmit([]byte{0x00, 0xa4, 0x00, 0x00, 0x02, 0x3f, 0x00})
	srv.Close()

	srv2 := agenttest.NewServerAt(t, addr)
	conn = srv2.Accept()
	conn.Hello()
	if r := conn.Transmit([]byte{0x00, 0xa4, 0x00, 0x00, 0x02, 0x3f, 0x00}); r.SW != 0x9000 {
		t.Errorf("SW after restart %04x", r.SW)
	}
}

// TestHelloRefused: a server that answers hello with an error (or
// anything but hello_ack) is retried.
func TestHelloRefused(t *testing.T) {
	srv := agenttest.NewServer(t)
	start(t, newTestSession(srv, newFakeCard()).Run)
	conn := srv.Accept()
	conn.Read()
	conn.Send(protocol.Error{Message: "go away " + strings.Repeat("x", 200)})
	if code, _ := conn.ExpectClose(); code != websocket.CloseProtocolError {
		t.Errorf("close code %d after refused hello, want 1002", code)
	}
	conn = srv.Accept()
	conn.Read()
	conn.Send(protocol.Print{Message: "not an ack"})
	conn.ExpectClose()
	conn = srv.Accept()
	conn.Read()
	conn.SendRaw([]byte("garbage"))
	conn.ExpectClose()
	conn = srv.Accept()
	conn.Hello()
	conn.Transmit([]byte{0, 0xb0, 0, 0, 0})
}

// TestOversizedFrame: a frame above protocol.MaxFrameSize ends the
// connection (gorilla closes it with 1009); the agent reconnects.
func TestOversizedFrame(t *testing.T) {
	srv := agenttest.NewServer(t)
	start(t, newTestSession(srv, newFakeCard()).Run)
	conn := srv.Accept()
	conn.Hello()
	big := `{"msg_type": "print", "message": "` + strings.Repeat("x", protocol.MaxFrameSize) + `"}`
	conn.SendRaw([]byte(big))
	if code, _ := conn.ExpectClose(); code != websocket.CloseMessageTooBig {
		t.Errorf("close code %d, want 1009", code)
	}
	conn = srv.Accept()
	conn.Hello()
}

func TestBadServerURL(t *testing.T) {
	for _, u := range []string{"http://127.0.0.1:1/", "127.0.0.1:4221", "ws://", "ws://%zz/", "wss://pi:hunter2@relay.example/"} {
		s := NewSession(Config{Server: u, Logger: testLogger()}, newFakeCard(), "r")
		err := s.Run(context.Background())
		if !errors.Is(err, ErrBadServerURL) {
			t.Errorf("Run(%q) = %v, want ErrBadServerURL", u, err)
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("Run(%q) = %v shows the password", u, err)
		}
	}
}
