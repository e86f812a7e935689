package vpcdbridge

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/wsrc-go/wsrc/agent"
	"github.com/wsrc-go/wsrc/agent/agenttest"
	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/internal/testenv/cardevents"
	"github.com/wsrc-go/wsrc/internal/testenv/pcscdtest"
	"github.com/wsrc-go/wsrc/pcsc"
	"github.com/wsrc-go/wsrc/server"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitTimeout bounds every wait for the stack to reach a state: pcscd
// polls vpcd every 400 ms, the bridge checks the server every
// checkInterval; generous for a loaded CI machine.
const waitTimeout = 30 * time.Second

// checkInterval is the bridges' CheckInterval in these tests.
const checkInterval = 100 * time.Millisecond

// env is the whole chain of a test:
//
//	PC/SC app (pcsc package, scriptor, opensc-tool) ── private pcscd ── vpcd
//	  ◄── Bridge ──ws──► server (loopback) ◄──ws── agent.Session ── card/sim
//
// The server listens on fixed loopback addresses so that it can be
// restarted where agents and bridges look for it.
type env struct {
	t    *testing.T
	d    *pcscdtest.Daemon
	logs *agenttest.Buffer
	log  *slog.Logger

	userAddr, cardAddr string
	srvCfg             server.Config
	agentToken         string // the agents' token, when srvCfg.Auth wants one

	mu  sync.Mutex // guards srv
	srv *running   // the running server; nil while stopped

	// cards hears of every change of the server's cards (its Observer).
	cards cardevents.Changes
}

// running is one run of the server on the env's addresses.
type running struct {
	srv          *server.Server
	users, cards *http.Server
	done         chan struct{} // closed when both Serve calls returned
}

func newEnv(t *testing.T, cfg server.Config) *env {
	t.Helper()
	if testing.Short() {
		t.Skip("real PC/SC stack test in -short mode")
	}
	logs := &agenttest.Buffer{}
	e := &env{t: t, logs: logs, srvCfg: cfg,
		log: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	t.Cleanup(func() { // runs last
		if t.Failed() || os.Getenv("WSRC_TEST_LOG") != "" {
			t.Logf("server, agent and bridge log:\n%s", logs.String())
			if e.d != nil {
				t.Logf("pcscd log:\n%s", e.d.Log())
			}
		}
	})
	e.d = pcscdtest.Start(t)
	e.userAddr, e.cardAddr = freeAddr(t), freeAddr(t)
	e.startServer()
	t.Cleanup(e.stopServer)
	return e
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startServer starts a fresh server on the env's addresses.
func (e *env) startServer() {
	e.t.Helper()
	cfg := e.srvCfg
	cfg.Observer = &e.cards
	srv := server.New(cfg, e.log.With("program", "server"))
	r := &running{srv: srv, done: make(chan struct{}),
		users: &http.Server{Handler: srv.UserHandler()}, cards: &http.Server{Handler: srv.CardHandler()}}
	lu, err := net.Listen("tcp4", e.userAddr)
	if err != nil {
		e.t.Fatal(err)
	}
	lc, err := net.Listen("tcp4", e.cardAddr)
	if err != nil {
		lu.Close()
		e.t.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, p := range []struct {
		s *http.Server
		l net.Listener
	}{{r.users, lu}, {r.cards, lc}} {
		wg.Go(func() { _ = p.s.Serve(p.l) })
	}
	go func() { wg.Wait(); close(r.done) }()
	e.mu.Lock()
	e.srv = r
	e.mu.Unlock()
}

// stopServer shuts the server down (closing every WebSocket) and waits.
func (e *env) stopServer() {
	e.mu.Lock()
	r := e.srv
	e.srv = nil
	e.mu.Unlock()
	if r == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.srv.Shutdown(ctx); err != nil {
		e.t.Errorf("server shutdown: %v", err)
	}
	r.users.Close()
	r.cards.Close()
	<-r.done
}

func (e *env) userURL() string { return "ws://" + e.userAddr + "/" }

// agentCard runs an agent session for c in reader; stop pulls the card
// (the session ends and the server drops the card) and waits.
func (e *env) agentCard(c card.Card, reader string) (stop func()) {
	s := agent.NewSession(agent.Config{
		Server: "ws://" + e.cardAddr + "/",
		Agent:  "testagent",
		Token:  e.agentToken,
		Logger: e.log.With("program", "agent", "reader", reader),
		Timing: agent.Timing{MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond},
	}, c, reader)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := s.Run(ctx); err != nil {
			e.t.Errorf("agent session %s: %v", reader, err)
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	e.t.Cleanup(stop)
	return stop
}

// bridge runs a Bridge for the card with iccid in vpcd slot i. Its events
// arrive on the returned channel.
func (e *env) bridge(i int, idType, idStr string, opts ...func(*Config)) <-chan Event {
	e.t.Helper()
	events, _ := e.startBridge(i, idType, idStr, opts...)
	return events
}

// startBridge is bridge, and also returns a function that stops the
// bridge and waits for it (the test's cleanup does too).
func (e *env) startBridge(i int, idType, idStr string, opts ...func(*Config)) (<-chan Event, func()) {
	e.t.Helper()
	events := make(chan Event, 1024)
	cfg := Config{
		Server: e.userURL(), IDType: idType, IDStr: idStr, VPCD: e.d.SlotAddr(i),
		Logger:        e.log.With("program", "bridge", "slot", i),
		CheckInterval: checkInterval, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		OnEvent: func(ev Event) {
			select {
			case events <- ev:
			default: // a test that stopped reading must not block the bridge
			}
		},
	}
	for _, o := range opts {
		o(&cfg)
	}
	b, err := New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := b.Run(ctx); err != nil {
			e.t.Errorf("bridge: %v", err)
		}
	}()
	stop := func() { cancel(); <-done }
	e.t.Cleanup(stop)
	return events, stop
}

// waitEvent skips bridge events until one matches.
func waitEvent(t *testing.T, events <-chan Event, what string, match func(Event) bool) Event {
	t.Helper()
	timer := time.NewTimer(waitTimeout)
	defer timer.Stop()
	for {
		select {
		case ev := <-events:
			t.Logf("bridge event: %v %v %v", ev.Kind, ev.Identities, ev.Err)
			if match(ev) {
				return ev
			}
		case <-timer.C:
			t.Fatalf("no bridge event %s within %v", what, waitTimeout)
		}
	}
}

func kind(k EventKind) func(Event) bool { return func(ev Event) bool { return ev.Kind == k } }

// watcher collects PC/SC reader events of the private pcscd.
type watcher struct {
	t  *testing.T
	ch chan pcsc.ReaderEvent
}

func (e *env) watch() *watcher {
	ctx, cancel := context.WithCancel(context.Background())
	w := &watcher{t: e.t, ch: make(chan pcsc.ReaderEvent, 1024)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		err := pcsc.Watch(ctx, pcsc.WatchOptions{
			Filter:     pcsc.Filter{Include: []string{pcscdtest.ReaderName + "*"}},
			Logger:     slog.New(slog.NewTextHandler(io.Discard, nil)),
			MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		}, func(ev pcsc.ReaderEvent) {
			select {
			case w.ch <- ev:
			default:
			}
		})
		if err != nil {
			e.t.Error(err)
		}
	}()
	e.t.Cleanup(func() { cancel(); <-done })
	return w
}

func (w *watcher) waitFor(what string, match func(pcsc.ReaderEvent) bool) pcsc.ReaderEvent {
	w.t.Helper()
	timer := time.NewTimer(waitTimeout)
	defer timer.Stop()
	for {
		select {
		case ev := <-w.ch:
			if match(ev) {
				return ev
			}
		case <-timer.C:
			w.t.Fatalf("no PC/SC event %s within %v", what, waitTimeout)
		}
	}
}

func (w *watcher) present(reader string) pcsc.ReaderEvent {
	w.t.Helper()
	return w.waitFor(reader+" present", func(ev pcsc.ReaderEvent) bool { return ev.Reader == reader && ev.CardPresent })
}

func (w *watcher) absent(reader string) pcsc.ReaderEvent {
	w.t.Helper()
	return w.waitFor(reader+" absent", func(ev pcsc.ReaderEvent) bool { return ev.Reader == reader && !ev.CardPresent && !ev.Gone })
}

// open connects to the card in reader through the project's pcsc package.
func open(t *testing.T, reader string) *pcsc.Card {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	c, err := pcsc.Open(ctx, reader, pcsc.OpenOptions{})
	if err != nil {
		t.Fatalf("opening %s: %v", reader, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// transmit sends cmd through PC/SC and checks the status word.
func transmit(t *testing.T, c *pcsc.Card, cmd []byte, wantSW uint16) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	r, err := c.Transmit(ctx, cmd)
	if err != nil {
		t.Fatalf("APDU %x: %v", cmd, err)
	}
	data, sw, err := card.SplitResponse(r)
	if err != nil {
		t.Fatalf("APDU %x: %v", cmd, err)
	}
	if sw != wantSW {
		t.Fatalf("APDU %x: SW %04x (data %x), want %04x", cmd, sw, data, wantSW)
	}
	return data
}

// errContains reports whether err's text has s.
func errContains(err error, s string) bool { return err != nil && strings.Contains(err.Error(), s) }
