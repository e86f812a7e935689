package server

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/internal/testenv/wstest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// env is a server under test; peers connect to it over in-memory pipes,
// so tests run inside a synctest bubble with fake time.
type env struct {
	t   *testing.T
	srv *Server
	n   int // peers created, for distinct remote ports
}

func newEnv(t *testing.T, cfg Config) *env {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv := New(cfg, logger)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return &env{t: t, srv: srv}
}

func (e *env) nextAddr() string {
	e.n++
	return "127.0.0.1:" + strconv.Itoa(40000+e.n)
}

// peerTimeout bounds each wait of a test peer. The tests run in synctest
// bubbles, where it is fake time: it must only exceed every server
// timeout a test waits for.
const peerTimeout = time.Hour

// pipe connects a peer to h over an in-memory pipe.
func (e *env) pipe(h http.Handler, remote string, opts ...wstest.Option) *wstest.Peer {
	if remote == "" {
		remote = e.nextAddr()
	}
	p := wstest.Pipe(e.t, h, remote, opts...)
	p.Timeout = peerTimeout
	return p
}

// card connects a card agent peer from remote ("" picks one).
func (e *env) card(remote string) *wstest.Peer { return e.pipe(e.srv.CardHandler(), remote) }

// user connects a user peer.
func (e *env) user() *wstest.Peer { return e.pipe(e.srv.UserHandler(), "") }

// helloUser connects a user and completes hello.
func (e *env) helloUser() *wstest.Peer {
	e.t.Helper()
	u := e.user()
	u.Send(`{"msg_type": "hello", "client_type": "user"}`)
	expectJSON(e.t, u.Recv(), `{"msg_type": "hello_ack"}`)
	return u
}

// Identification APDUs, as pySim's server sends them.
const (
	cmdSelectISDR = "00a4040410a0000005591010ffffffff8900000100"
	cmdGetEID     = "80e2910006bf3e035c015a"
	cmdSelectMF   = "00a40000023f00"
	cmdSelectICC  = "00a40000022fe2"
	cmdReadICCID  = "00b0000000"
)

// helloCard says hello from card agent c with atr and expects hello_ack
// and the first identification APDU (SELECT ISD-R).
func helloCard(t *testing.T, c *wstest.Peer, atr string) {
	t.Helper()
	c.Send(`{"msg_type":"hello","client_type":"card","atr":"` + atr + `"}`)
	expectJSON(t, c.Recv(), `{"msg_type": "hello_ack"}`)
	expectCAPDU(t, c, cmdSelectISDR)
}

// identifyATROnly answers the rest of the identification after SELECT
// ISD-R as a card with neither ISD-R nor MF does.
func identifyATROnly(t *testing.T, c *wstest.Peer) {
	t.Helper()
	c.Send(`{"response": "", "sw": "6a82", "msg_type": "r_apdu"}`)
	expectCAPDU(t, c, cmdSelectMF)
	c.Send(`{"response": "", "sw": "6a82", "msg_type": "r_apdu"}`)
	expectJSON(t, c.Recv(), `{"new_state": "ready", "msg_type": "state_notification"}`)
}

// atrCard connects a card agent with an ATR-only card (no ISD-R, no MF)
// and plays its identification, as error-probes P4 does.
func (e *env) atrCard(atr string) *wstest.Peer {
	e.t.Helper()
	c := e.card("")
	helloCard(e.t, c, atr)
	identifyATROnly(e.t, c)
	return c
}

// uiccCard connects a card agent with a UICC that has the given ICCID
// (EF.ICCID contents in hex) and no ISD-R.
func (e *env) uiccCard(atr, efICCID string) *wstest.Peer {
	e.t.Helper()
	c := e.card("")
	helloCard(e.t, c, atr)
	c.Send(`{"response": "", "sw": "6a82", "msg_type": "r_apdu"}`)
	for _, cmd := range []string{cmdSelectMF, cmdSelectICC} {
		expectCAPDU(e.t, c, cmd)
		c.Send(`{"response": "", "sw": "9000", "msg_type": "r_apdu"}`)
	}
	expectCAPDU(e.t, c, cmdReadICCID)
	c.Send(`{"response": "` + efICCID + `", "sw": "9000", "msg_type": "r_apdu"}`)
	identifyExtensions(e.t, c, efICCID, false)
	expectJSON(e.t, c.Recv(), `{"new_state": "ready", "msg_type": "state_notification"}`)
	return c
}

// Our identification's extensions after pySim's sequence (card.Identify):
// the IMSI step's first READ RECORD of EF.DIR, and the SELECTs of the
// alternative ISD-R AIDs.
const cmdReadDIR1 = "00b201f400"

var cmdSelectAltISDR = []string{
	"00a4040410a0000005591010ffffffff890005050000",
	"00a4040410a000000559101000000000890000030000",
	"00a4040410a0000005591010ffffffff890000017700",
}

// identifyExtensions answers the extensions as a card without EF.DIR
// record (so no IMSI) and, unless isdr (the standard ISD-R was found),
// without any alternative ISD-R. A card whose EF.ICCID holds no ICCID
// gets no extensions.
func identifyExtensions(t *testing.T, c *wstest.Peer, efICCID string, isdr bool) {
	t.Helper()
	b, err := hex.DecodeString(efICCID)
	if err != nil {
		t.Fatal(err)
	}
	if card.DecodeICCID(b) == "" {
		return
	}
	expectCAPDU(t, c, cmdReadDIR1)
	c.Send(`{"response": "", "sw": "6a83", "msg_type": "r_apdu"}`)
	if isdr {
		return
	}
	for _, cmd := range cmdSelectAltISDR {
		expectCAPDU(t, c, cmd)
		c.Send(`{"response": "", "sw": "6a82", "msg_type": "r_apdu"}`)
	}
}

// selectCard selects by id_type/id_str and expects the ack.
func selectCard(t *testing.T, u *wstest.Peer, idType, idStr, wantIDs string) {
	t.Helper()
	u.Send(`{"msg_type": "select_card", "id_type": "` + idType + `", "id_str": "` + idStr + `"}`)
	expectJSON(t, u.Recv(), `{"identities": `+wantIDs+`, "msg_type": "select_card_ack"}`)
}

func expectCAPDU(t *testing.T, p *wstest.Peer, cmd string) {
	t.Helper()
	expectJSON(t, p.Recv(), `{"command": "`+cmd+`", "msg_type": "c_apdu"}`)
}

// expectJSON compares two JSON objects field by field.
func expectJSON(t *testing.T, got, want string) {
	t.Helper()
	if !reflect.DeepEqual(decodeObj(t, got), decodeObj(t, want)) {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}

// expectError checks that got is an error message containing each of
// the substrings.
func expectError(t *testing.T, got string, substrings ...string) {
	t.Helper()
	m := decodeObj(t, got)
	if m["msg_type"] != "error" {
		t.Fatalf("got %s, want an error", got)
	}
	text, _ := m["message"].(string)
	for _, s := range substrings {
		if !strings.Contains(text, s) {
			t.Fatalf("error %q does not contain %q", text, s)
		}
	}
}

// expectClosed waits for the connection to end and checks the close code
// and that the reason contains want.
func expectClosed(t *testing.T, p *wstest.Peer, code int, want string) {
	t.Helper()
	gotCode, reason := p.WaitClosed()
	if gotCode != code || !strings.Contains(reason, want) {
		t.Fatalf("closed with %d %q, want %d with %q", gotCode, reason, code, want)
	}
}

func decodeObj(t *testing.T, s string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatalf("not a JSON object: %s: %v", s, err)
	}
	return m
}
