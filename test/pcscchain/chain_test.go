package pcscchain

import (
	"context"
	"encoding/hex"
	"errors"
	"log/slog"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/wsrc-go/wsrc/agent"
	"github.com/wsrc-go/wsrc/agent/agenttest"
	"github.com/wsrc-go/wsrc/agent/pcscbackend"
	"github.com/wsrc-go/wsrc/card/sim"
	"github.com/wsrc-go/wsrc/client"
	"github.com/wsrc-go/wsrc/internal/testenv/cardevents"
	"github.com/wsrc-go/wsrc/internal/testenv/pcscdtest"
	"github.com/wsrc-go/wsrc/internal/vpcd"
	"github.com/wsrc-go/wsrc/pcsc"
	"github.com/wsrc-go/wsrc/protocol"
	"github.com/wsrc-go/wsrc/server"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitTimeout bounds every wait for the chain to reach a state. Normally
// each takes well under a second; the bound is generous for loaded CI
// machines.
const waitTimeout = 30 * time.Second

// chain is one whole WSRC chain: a private pcscd with two vpcd readers, a
// server on loopback and an agent serving pcscd's readers to it.
type chain struct {
	t   *testing.T
	d   *pcscdtest.Daemon
	srv *server.Server
	// userURL is the server's user port.
	userURL string
	// agentDone is closed when the agent's Manager.Run has returned.
	agentDone chan struct{}
	agentErr  error // set before agentDone is closed
	// cards hears of every change of the server's cards (its Observer).
	cards cardevents.Changes
}

// chainOption changes the agent's PC/SC backend configuration.
type chainOption func(*pcscbackend.Config)

// newChain starts pcscd, the server and the agent; the test's cleanup
// stops them (agent first, then server, then pcscd).
func newChain(t *testing.T, opts ...chainOption) *chain {
	t.Helper()
	if testing.Short() {
		t.Skip("real PC/SC stack test in -short mode")
	}
	logs := &agenttest.Buffer{} // printed only when the test fails, or with WSRC_TEST_LOG
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c := &chain{t: t, agentDone: make(chan struct{})}
	t.Cleanup(func() { // runs last
		if t.Failed() || os.Getenv("WSRC_TEST_LOG") != "" {
			t.Logf("server and agent log:\n%s", logs.String())
			if c.d != nil {
				t.Logf("pcscd log:\n%s", c.d.Log())
			}
		}
	})
	c.d = pcscdtest.Start(t)

	// ShowRemoteAddr: each card connection's port tells a fresh session
	// from an old one (TestPcscdRestart).
	c.srv = server.New(server.Config{ShowRemoteAddr: true, Observer: &c.cards}, log.With("program", "server"))
	users := httptest.NewServer(c.srv.UserHandler())
	cards := httptest.NewServer(c.srv.CardHandler())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := c.srv.Shutdown(ctx); err != nil {
			t.Errorf("server shutdown: %v", err)
		}
		users.Close()
		cards.Close()
	})
	c.userURL = "ws://" + users.Listener.Addr().String() + "/"

	bcfg := pcscbackend.Config{
		Filter:     pcsc.Filter{Include: []string{pcscdtest.ReaderName + "*"}},
		Logger:     log.With("program", "agent"),
		MinBackoff: 20 * time.Millisecond,
		MaxBackoff: 200 * time.Millisecond,
	}
	for _, o := range opts {
		o(&bcfg)
	}
	b, err := pcscbackend.New(bcfg)
	if err != nil {
		t.Fatal(err)
	}
	m := agent.NewManager(agent.Config{
		Server: "ws://" + cards.Listener.Addr().String() + "/",
		Agent:  "pcscchain",
		Logger: log.With("program", "agent"),
		Timing: agent.Timing{MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond},
	}, b)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		defer close(c.agentDone)
		c.agentErr = m.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-c.agentDone
		if c.agentErr != nil {
			t.Errorf("agent: %v", c.agentErr)
		}
	})
	return c
}

// insert puts card into vpcd reader i; the test's cleanup removes it.
func (c *chain) insert(i int, card vpcd.Card) *vpcd.Slot {
	c.t.Helper()
	slot := vpcd.NewSlot(c.d.SlotAddr(i))
	c.t.Cleanup(func() { slot.Remove() })
	if err := slot.Insert(context.Background(), card); err != nil {
		c.t.Fatal(err)
	}
	return slot
}

// checkAgentRunning fails the test if the agent's Manager has stopped.
func (c *chain) checkAgentRunning() {
	c.t.Helper()
	select {
	case <-c.agentDone:
		c.t.Fatalf("the agent stopped: %v", c.agentErr)
	default:
	}
}

// waitCards waits until ok accepts the server's card list, looking at it
// again at every change of the server's cards, and returns that list.
func (c *chain) waitCards(what string, ok func([]protocol.CardInfo) bool) []protocol.CardInfo {
	c.t.Helper()
	timeout := time.NewTimer(waitTimeout)
	defer timeout.Stop()
	for {
		changed := c.cards.Next() // before looking: no change is missed
		cards := c.srv.Cards()
		if ok(cards) {
			return cards
		}
		select {
		case <-changed:
		case <-c.agentDone:
			c.t.Fatalf("the agent stopped while waiting for %s: %v", what, c.agentErr)
		case <-timeout.C:
			c.t.Fatalf("waited %v for %s; the server lists %+v", waitTimeout, what, cards)
		}
	}
}

// findCard returns the card with iccid in cards, if any.
func findCard(cards []protocol.CardInfo, iccid string) (protocol.CardInfo, bool) {
	i := slices.IndexFunc(cards, func(ci protocol.CardInfo) bool { return ci.Identities[protocol.IdentityICCID] == iccid })
	if i < 0 {
		return protocol.CardInfo{}, false
	}
	return cards[i], true
}

// waitReady waits until the card with iccid is identified and ready (not
// associated with a user), and returns it. If not is given, a card whose
// agent connection has that remote address does not count: it waits for
// a fresh session of the card.
func (c *chain) waitReady(iccid string, not ...protocol.RemoteAddr) protocol.CardInfo {
	c.t.Helper()
	var found protocol.CardInfo
	c.waitCards("card ICCID "+iccid+" ready", func(cards []protocol.CardInfo) bool {
		ci, ok := findCard(cards, iccid)
		if !ok || ci.State != "ready" || slices.Contains(not, ci.RemoteAddr) {
			return false
		}
		found = ci
		return true
	})
	return found
}

// waitGone waits until no card with iccid is listed.
func (c *chain) waitGone(iccid string) {
	c.t.Helper()
	c.waitCards("card ICCID "+iccid+" to leave", func(cards []protocol.CardInfo) bool {
		_, ok := findCard(cards, iccid)
		return !ok
	})
}

// dial connects a user; the test's cleanup closes it.
func (c *chain) dial() *client.Client {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	u, err := client.Dial(ctx, c.userURL, client.WithRequestTimeout(waitTimeout), client.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { u.Close() })
	return u
}

// selectCard dials a user and selects the card with iccid.
func (c *chain) selectCard(iccid string) *client.Client {
	c.t.Helper()
	u := c.dial()
	if _, err := u.Select(context.Background(), "iccid", iccid); err != nil {
		c.t.Fatal(err)
	}
	return u
}

// Commands used by the scenarios (card/sim's file tree).
var (
	selectMF    = mustHex("00a40004023f00")
	selectICCID = mustHex("00a40004022fe2")
	selectBig   = mustHex("00a4000c026f99") // EF 6F99, 4000 bytes, no FCP
)

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// readBinaryExt is READ BINARY at offset with an extended Le.
func readBinaryExt(offset, n int) []byte {
	return []byte{0x00, 0xb0, byte(offset >> 8), byte(offset), 0x00, byte(n >> 8), byte(n)}
}

// updateBinaryExt is UPDATE BINARY at offset with extended Lc.
func updateBinaryExt(offset int, data []byte) []byte {
	cmd := []byte{0x00, 0xd6, byte(offset >> 8), byte(offset), 0x00, byte(len(data) >> 8), byte(len(data))}
	return append(cmd, data...)
}

// bigEF is the initial content of sim's EF 6F99: byte i is i mod 251.
func bigEF(offset, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte((offset + i) % 251)
	}
	return b
}

// transmit sends cmd as the user and checks the status word.
func transmit(t *testing.T, u *client.Client, cmd []byte, wantSW uint16) []byte {
	t.Helper()
	resp, sw, err := u.Transmit(context.Background(), cmd)
	if err != nil {
		t.Fatalf("APDU %x: %v", cmd, err)
	}
	if sw != wantSW {
		t.Fatalf("APDU %x: SW %04x (data %x), want %04x", cmd, sw, resp, wantSW)
	}
	return resp
}

// recordingCard is a simulated card that records the APDUs vpcd delivers
// to it: what the agent really sent through PC/SC.
type recordingCard struct {
	*sim.Card
	mu   sync.Mutex
	cmds [][]byte // guarded by mu
}

func (r *recordingCard) Process(cmd []byte) []byte {
	r.mu.Lock()
	r.cmds = append(r.cmds, slices.Clone(cmd))
	r.mu.Unlock()
	return r.Card.Process(cmd)
}

// since returns the APDUs recorded after the first n.
func (r *recordingCard) since(n int) [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.cmds[n:])
}

func (r *recordingCard) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.cmds)
}

// serverError checks that err is the server's answer (not a timeout or a
// broken connection) and contains want.
func serverError(t *testing.T, err error, want string) {
	t.Helper()
	var se *client.ServerError
	if !errors.As(err, &se) || !strings.Contains(se.Message, want) {
		t.Fatalf("got %v, want a server error containing %q", err, want)
	}
}
