package daemon

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsrc-go/wsrc/internal/auth"
)

// reloadConfig is a configuration with users alice (a token, every card)
// and bob (a password, the cards of agent pi, or of bobsAgent) and the
// agent pi (a token).
func reloadConfig(aliceTok, bobHash, bobsAgent string) string {
	return `
[[user]]
name = "alice"
token_hashes = ["` + auth.HashToken(aliceTok).String() + `"]
all_cards = true

[[user]]
name = "bob"
password_hash = "` + bobHash + `"
cards = [{ agent = "` + bobsAgent + `" }]

[[agent]]
name = "pi"
token_hashes = ["` + auth.HashToken(tokAgent).String() + `"]
`
}

// dialAs opens a WebSocket to addr with an Authorization header.
func dialAs(t *testing.T, addr, authz string) *websocket.Conn {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	c, resp, err := d.Dial("ws://"+addr+"/", http.Header{"Authorization": {authz}})
	if err != nil {
		if resp != nil {
			t.Fatalf("dialing %s: %v (%s)", addr, err, resp.Status)
		}
		t.Fatalf("dialing %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// recv reads the next message (within 10 s: a bound, not a wait) and
// checks that it contains want.
func recv(t *testing.T, c *websocket.Conn, want string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, got, err := c.ReadMessage()
	if err != nil || !strings.Contains(string(got), want) {
		t.Fatalf("got %s %v; want %s", got, err, want)
	}
}

// SIGHUP applies changed accounts to open connections: a user whose
// token is gone is closed with an error and 1008, a user whose rules no
// longer allow its card loses it (the card is free again), and an
// invalid file changes nothing. The log says what happened, without
// secrets.
func TestReloadAppliesToOpenConnections(t *testing.T) {
	userF, userAddr := tcpListenerFile(t)
	cardF, cardAddr := tcpListenerFile(t)
	bobHash := cheapHash(t, "bob-pw")
	path := writeConfig(t, reloadConfig(tokUser, bobHash, "pi"))
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	c := startChild(t, ctx, []string{"--config", path, "--status-bind", ""},
		[]string{"LISTEN_FDS=2", "LISTEN_FDNAMES=card:user"}, cardF, userF)

	card := dialAs(t, cardAddr, "Bearer "+tokAgent)
	roundTrip(t, card, `{"msg_type":"hello","client_type":"card","atr":"3b00","reader":"r0"}`, "hello_ack")
	recv(t, card, `"c_apdu"`) // SELECT ISD-R
	roundTrip(t, card, `{"response": "", "sw": "6a82", "msg_type": "r_apdu"}`, `"c_apdu"`)
	roundTrip(t, card, `{"response": "", "sw": "6a82", "msg_type": "r_apdu"}`, `"ready"`)

	bob := dialAs(t, userAddr, "Basic "+base64.StdEncoding.EncodeToString([]byte("bob:bob-pw")))
	roundTrip(t, bob, `{"msg_type":"hello","client_type":"user"}`, "hello_ack")
	roundTrip(t, bob, `{"msg_type":"select_card","id_type":"atr","id_str":"3b00"}`, "select_card_ack")
	recv(t, card, `"associated"`)
	alice := dialAs(t, userAddr, "Bearer "+tokUser)
	roundTrip(t, alice, `{"msg_type":"hello","client_type":"user"}`, "hello_ack")
	roundTrip(t, alice, `{"msg_type":"list_cards"}`, `"3b00"`)

	// alice gets a new token; bob may use another agent's cards only.
	if err := os.WriteFile(path, []byte(reloadConfig("wsrc_alice-new-token", bobHash, "other")), 0o600); err != nil {
		t.Fatal(err)
	}
	c.signal(t, syscall.SIGHUP)
	recv(t, alice, "credentials revoked by the server's operator")
	alice.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _, err := alice.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.ClosePolicyViolation || ce.Text != "credentials revoked by the server's operator" {
		t.Fatalf("alice after the reload: %v, want close 1008", err)
	}
	recv(t, card, `"ready"`) // bob's card is free again
	roundTrip(t, bob, `{"msg_type":"c_apdu","command":"00b0000000"}`, "access to this card was withdrawn by the server's operator")
	roundTrip(t, bob, `{"msg_type":"list_cards"}`, `"cards": []`)
	c.stderr.waitFor(t, "accounts reloaded and applied to open connections", 1)
	log := c.stderr.String()
	for _, want := range []string{"revoked=1", "cards_withdrawn=1", `name=alice credential="token (bearer)"`, "card withdrawn"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q", want)
		}
	}
	for _, secret := range []string{tokUser, tokAgent, "bob-pw"} {
		if strings.Contains(log, secret) {
			t.Errorf("log holds a secret: %q", secret)
		}
	}

	// An invalid file: nothing changes for anyone.
	if err := os.WriteFile(path, []byte("[[user]]\nname = \"bob\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c.signal(t, syscall.SIGHUP)
	c.stderr.waitFor(t, "configuration not reloaded", 1)
	roundTrip(t, bob, `{"msg_type":"list_cards"}`, "list_cards_ack")

	c.signal(t, syscall.SIGTERM)
	c.wait(t)
	if n := strings.Count(c.stderr.String(), "credentials no longer accepted"); n != 1 {
		t.Errorf("%d revocations logged, want 1:\n%s", n, c.stderr.String())
	}
}
