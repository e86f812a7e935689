package server

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/wsrc-go/wsrc/internal/testenv/wstest"
)

// The same relay over real loopback TCP: a card agent whose TCP
// connection is dropped mid-APDU (with a reset, no close frame).
func TestLoopbackTCPDropMidAPDU(t *testing.T) {
	l := newLoopback(t, Config{ShowRemoteAddr: true})
	c := wstest.Dial(t, wsURL(l.card))
	helloCard(t, c, "3b7f")
	identifyATROnly(t, c)

	u := wstest.Dial(t, wsURL(l.user))
	u.Send(`{"msg_type": "hello", "client_type": "user"}`)
	expectJSON(t, u.Recv(), `{"msg_type": "hello_ack"}`)
	u.Send(`{"msg_type": "list_cards"}`)
	list := decodeObj(t, u.Recv())
	addr := list["cards"].([]any)[0].(map[string]any)["remote_addr"].([]any)
	if addr[0] != "127.0.0.1" || addr[1] != float64(c.Conn.LocalAddr().(*net.TCPAddr).Port) {
		t.Fatalf("remote_addr %v, want the agent's address %v", addr, c.Conn.LocalAddr())
	}
	selectCard(t, u, "atr", "3b7f", `{"ATR": "3b7f"}`)
	expectJSON(t, c.Recv(), stateAssoc)
	u.Send(`{"msg_type": "c_apdu", "command": "00b0000000"}`)
	expectCAPDU(t, c, "00b0000000")
	if err := c.Conn.NetConn().(*net.TCPConn).SetLinger(0); err != nil {
		t.Fatal(err)
	}
	c.Drop()
	expectError(t, u.Recv(), "card disconnected: the card agent's connection was lost")
	u.Send(`{"msg_type": "list_cards"}`)
	expectJSON(t, u.Recv(), `{"cards": [], "msg_type": "list_cards_ack"}`)
}

// A plain HTTP request gets an explanation, not a bare 400.
func TestNotAWebSocket(t *testing.T) {
	l := newLoopback(t, Config{})
	resp, err := http.Get(l.user.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "WSRC WebSocket endpoint") {
		t.Fatalf("got %s %q", resp.Status, body)
	}
}

// Connections beyond MaxUsers/MaxCards are refused with 503.
func TestConnectionLimit(t *testing.T) {
	l := newLoopback(t, Config{MaxUsers: 1, MaxCards: 1})
	wstest.Dial(t, wsURL(l.user))
	wstest.Dial(t, wsURL(l.card))
	for _, url := range []string{wsURL(l.user), wsURL(l.card)} {
		_, resp, err := websocketDial(url)
		if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("%s: third connection: %v %v, want 503", url, err, resp)
		}
	}
}
