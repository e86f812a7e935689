package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsrc-go/wsrc/agent/agenttest"
	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/protocol"
)

// fakeBackend forwards the events a test feeds it.
type fakeBackend struct {
	name   string
	events chan SlotEvent
	fail   chan error
}

func newFakeBackend(name string) *fakeBackend {
	return &fakeBackend{name: name, events: make(chan SlotEvent), fail: make(chan error)}
}

func (b *fakeBackend) Name() string { return b.name }

func (b *fakeBackend) Probe(ctx context.Context) BackendReport {
	return BackendReport{Backend: b.name}
}

func (b *fakeBackend) Run(ctx context.Context, out chan<- SlotEvent) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-b.fail:
			return err
		case ev := <-b.events:
			select {
			case out <- ev:
			case <-ctx.Done():
				return nil
			}
		}
	}
}

// send hands the manager one event.
func (b *fakeBackend) send(t *testing.T, ev SlotEvent) {
	t.Helper()
	select {
	case b.events <- ev:
	case <-time.After(10 * time.Second):
		t.Fatal("backend event not taken within 10s")
	}
}

func (b *fakeBackend) insert(t *testing.T, reader string, c card.Card) {
	t.Helper()
	b.send(t, SlotEvent{
		Slot:    SlotID{Backend: b.name, Reader: reader},
		Present: true,
		Open:    func(context.Context) (card.Card, error) { return c, nil },
	})
}

func (b *fakeBackend) remove(t *testing.T, reader string) {
	t.Helper()
	b.send(t, SlotEvent{Slot: SlotID{Backend: b.name, Reader: reader}})
}

func newTestManager(srv *agenttest.Server, backends ...Backend) *Manager {
	return NewManager(Config{Server: srv.URL(), Agent: "testhost", Logger: testLogger(), Timing: fastTiming}, backends...)
}

func cardWithATR(b byte) *fakeCard {
	c := newFakeCard()
	c.atr = []byte{0x3b, b}
	return c
}

// TestManagerTwoCards: two cards make two sessions, each with its own
// reader name and ATR and its own card.
func TestManagerTwoCards(t *testing.T) {
	srv := agenttest.NewServer(t)
	b := newFakeBackend("fake")
	r := start(t, newTestManager(srv, b).Run)
	c0, c1 := cardWithATR(0), cardWithATR(1)
	c0.setTransmit(func(context.Context, []byte) ([]byte, error) { return []byte{0x00, 0x90, 0x00}, nil })
	c1.setTransmit(func(context.Context, []byte) ([]byte, error) { return []byte{0x01, 0x90, 0x00}, nil })
	b.insert(t, "reader 0", c0)
	b.insert(t, "reader 1", c1)

	conns := map[string]*agenttest.Conn{}
	for range 2 {
		conn := srv.Accept()
		h := conn.Hello()
		conns[h.Reader] = conn
		want := map[string][]byte{"reader 0": {0x3b, 0}, "reader 1": {0x3b, 1}}[h.Reader]
		if !bytes.Equal(h.ATR, want) {
			t.Errorf("hello from %q with ATR %x, want %x", h.Reader, h.ATR, want)
		}
	}
	for i, name := range []string{"reader 0", "reader 1"} {
		conn := conns[name]
		if conn == nil {
			t.Fatalf("no session for %s (have %v)", name, conns)
		}
		if rr := conn.Transmit([]byte{0, 0xb0, 0, 0}); !bytes.Equal(rr.Response, []byte{byte(i)}) {
			t.Errorf("%s answered %x", name, rr.Response)
		}
	}
	r.cancel()
	for name, conn := range conns {
		if code, _ := conn.ExpectClose(); code != websocket.CloseGoingAway {
			t.Errorf("%s: close code %d on shutdown, want 1001", name, code)
		}
	}
	if err := r.wait(t); err != nil {
		t.Errorf("Run = %v", err)
	}
	for _, c := range []*fakeCard{c0, c1} {
		if !c.isClosed() {
			t.Error("card not closed after shutdown")
		}
	}
}

// TestManagerRemoveInsert: removal closes the session (1001) and the
// card; insertion opens a fresh session.
func TestManagerRemoveInsert(t *testing.T) {
	srv := agenttest.NewServer(t)
	b := newFakeBackend("fake")
	start(t, newTestManager(srv, b).Run)
	c0 := cardWithATR(0)
	b.insert(t, "r", c0)
	conn := srv.Accept()
	conn.Hello()
	b.remove(t, "r")
	if code, _ := conn.ExpectClose(); code != websocket.CloseGoingAway {
		t.Errorf("close code %d on removal, want 1001", code)
	}
	c0.waitClosed(t)

	c1 := cardWithATR(1)
	b.insert(t, "r", c1)
	conn = srv.Accept()
	if h := conn.Hello(); !bytes.Equal(h.ATR, []byte{0x3b, 1}) {
		t.Errorf("new session's ATR %x", h.ATR)
	}
	conn.Transmit([]byte{0, 0xb0, 0, 0})

	// Removing an empty slot, or one of an unknown reader, is harmless.
	b.remove(t, "nothing here")
	// Present twice: the old session ends before the new card opens.
	c2 := cardWithATR(2)
	b.insert(t, "r", c2)
	if code, _ := conn.ExpectClose(); code != websocket.CloseGoingAway {
		t.Errorf("close code %d on re-insertion, want 1001", code)
	}
	c1.waitClosed(t)
	conn = srv.Accept()
	if h := conn.Hello(); !bytes.Equal(h.ATR, []byte{0x3b, 2}) {
		t.Errorf("third session's ATR %x", h.ATR)
	}
}

// TestManagerCardRemovedMidSession: a card that fails with ErrRemoved ends
// its session and is closed; the slot waits for the backend's next event.
func TestManagerCardRemovedMidSession(t *testing.T) {
	srv := agenttest.NewServer(t)
	b := newFakeBackend("fake")
	start(t, newTestManager(srv, b).Run)
	c0 := cardWithATR(0)
	c0.setTransmit(func(context.Context, []byte) ([]byte, error) { return nil, card.ErrRemoved })
	// The card is gone: opening it again fails until the backend says so.
	var opens atomic.Int32
	b.send(t, SlotEvent{
		Slot:    SlotID{Backend: "fake", Reader: "r"},
		Present: true,
		Open: func(context.Context) (card.Card, error) {
			if opens.Add(1) == 1 {
				return c0, nil
			}
			return nil, card.ErrNoCard
		},
	})
	conn := srv.Accept()
	conn.Hello()
	conn.Send(protocol.CAPDU{Command: []byte{0, 0xb0, 0, 0}})
	expectError(t, conn, "card removed")
	conn.ExpectClose()
	c0.waitClosed(t)
	b.remove(t, "r")
	c1 := cardWithATR(1)
	b.insert(t, "r", c1)
	conn = srv.Accept()
	conn.Hello()
}

// TestManagerOpenFails: a card that cannot be opened gets no session;
// the next insertion works.
func TestManagerOpenFails(t *testing.T) {
	srv := agenttest.NewServer(t)
	b := newFakeBackend("fake")
	start(t, newTestManager(srv, b).Run)
	opened := make(chan struct{}, 1)
	b.send(t, SlotEvent{
		Slot:    SlotID{Backend: "fake", Reader: "r"},
		Present: true,
		Open: func(context.Context) (card.Card, error) {
			select {
			case opened <- struct{}{}:
			default:
			}
			return nil, fmt.Errorf("powering up: %w", card.ErrMute)
		},
	})
	<-opened
	b.send(t, SlotEvent{Slot: SlotID{Backend: "fake", Reader: "r"}, Present: true}) // no Open: ignored
	c := cardWithATR(7)
	b.insert(t, "r", c)
	if h := srv.Accept().Hello(); !bytes.Equal(h.ATR, c.atr) {
		t.Errorf("ATR %x", h.ATR)
	}
}

// TestManagerBackendFails: when a backend stops, its sessions stop too;
// with no backend left Run returns the error.
func TestManagerBackendFails(t *testing.T) {
	srv := agenttest.NewServer(t)
	b1, b2 := newFakeBackend("one"), newFakeBackend("two")
	r := start(t, newTestManager(srv, b1, b2).Run)
	c1, c2 := cardWithATR(1), cardWithATR(2)
	b1.insert(t, "r", c1)
	conn1 := srv.Accept()
	conn1.Hello()
	b2.insert(t, "r", c2)
	conn2 := srv.Accept()
	conn2.Hello()

	boom := errors.New("pcscd went away")
	b1.fail <- boom
	conn1.ExpectClose()
	c1.waitClosed(t)
	conn2.Transmit([]byte{0, 0xb0, 0, 0}) // the other backend's card lives on

	b2.fail <- errors.New("usb unplugged")
	conn2.ExpectClose()
	err := r.wait(t)
	if !errors.Is(err, boom) {
		t.Errorf("Run = %v, want it to wrap %v", err, boom)
	}
	c2.waitClosed(t)
}

func TestManagerBadConfig(t *testing.T) {
	if err := NewManager(Config{Server: "ws://127.0.0.1:1/"}).Run(context.Background()); !errors.Is(err, ErrNoBackends) {
		t.Errorf("no backends: %v", err)
	}
	if err := NewManager(Config{Server: "nope"}, newFakeBackend("x")).Run(context.Background()); !errors.Is(err, ErrBadServerURL) {
		t.Errorf("bad URL: %v", err)
	}
}

// expectCloseReason reads until the agent closes the connection and returns
// the close code and reason.
func expectCloseReason(t *testing.T, conn *agenttest.Conn) (int, string) {
	t.Helper()
	ws := conn.WS()
	ws.SetReadDeadline(time.Now().Add(agenttest.Timeout))
	for {
		if _, _, err := ws.ReadMessage(); err != nil {
			var ce *websocket.CloseError
			if !errors.As(err, &ce) {
				t.Fatalf("connection ended without a close frame: %v", err)
			}
			ws.Close()
			return ce.Code, ce.Text
		}
	}
}

// TestManagerCloseReasons: the close frame says why the session ended.
func TestManagerCloseReasons(t *testing.T) {
	srv := agenttest.NewServer(t)
	b1, b2 := newFakeBackend("one"), newFakeBackend("two")
	r := start(t, newTestManager(srv, b1, b2).Run)
	check := func(conn *agenttest.Conn, want string) {
		t.Helper()
		if code, reason := expectCloseReason(t, conn); code != websocket.CloseGoingAway || reason != want {
			t.Errorf("closed with %d %q, want 1001 %q", code, reason, want)
		}
	}

	b1.insert(t, "r", cardWithATR(0))
	conn := srv.Accept()
	conn.Hello()
	b1.remove(t, "r")
	check(conn, "card removed")

	b1.insert(t, "r", cardWithATR(1))
	conn = srv.Accept()
	conn.Hello()
	b1.insert(t, "r", cardWithATR(2))
	check(conn, "card removed and another inserted")
	conn = srv.Accept()
	conn.Hello()

	b2.insert(t, "r", cardWithATR(3))
	conn2 := srv.Accept()
	conn2.Hello()
	b2.fail <- errors.New("gone")
	check(conn2, "card backend stopped")

	r.cancel()
	check(conn, "agent shutting down")
	r.wait(t)
}

// TestManagerReopensCard: a session whose card handle died while the card
// stayed in (pcscd restarted, say) is followed by a fresh session on a
// freshly opened card, without a new event from the backend; so is an
// Open that failed at first (card held by another application).
func TestManagerReopensCard(t *testing.T) {
	srv := agenttest.NewServer(t)
	b := newFakeBackend("fake")
	start(t, newTestManager(srv, b).Run)
	dead := cardWithATR(0)
	dead.setTransmit(func(context.Context, []byte) ([]byte, error) {
		return nil, fmt.Errorf("transmitting: %w", card.ErrRemoved)
	})
	fresh := cardWithATR(1)
	var opens atomic.Int32
	b.send(t, SlotEvent{
		Slot:    SlotID{Backend: "fake", Reader: "r"},
		Present: true,
		Open: func(context.Context) (card.Card, error) {
			switch opens.Add(1) {
			case 1:
				return nil, errors.New("SCARD_E_SHARING_VIOLATION")
			case 2:
				return dead, nil
			case 3:
				return nil, errors.New("SCARD_E_SHARING_VIOLATION")
			default:
				return fresh, nil
			}
		},
	})
	conn := srv.Accept()
	if h := conn.Hello(); !bytes.Equal(h.ATR, dead.atr) {
		t.Fatalf("first session's ATR %x", h.ATR)
	}
	conn.Send(protocol.CAPDU{Command: []byte{0, 0xb0, 0, 0}})
	expectError(t, conn, "card removed")
	conn.ExpectClose()
	dead.waitClosed(t)

	conn = srv.Accept()
	if h := conn.Hello(); !bytes.Equal(h.ATR, fresh.atr) {
		t.Fatalf("second session's ATR %x", h.ATR)
	}
	conn.Transmit([]byte{0, 0xb0, 0, 0})
	if n := opens.Load(); n != 4 {
		t.Errorf("%d opens, want 4", n)
	}
}

// waitState waits until the Manager's state satisfies ok.
func waitState(t *testing.T, m *Manager, what string, ok func(State) bool) State {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		st, changed := m.State()
		if ok(st) {
			return st
		}
		select {
		case <-changed:
		case <-timeout:
			t.Fatalf("state %+v, waited 10s for %s", st, what)
		}
	}
}

// TestManagerState: State counts the cards and the sessions the server
// accepted, and says when a session was ever accepted.
func TestManagerState(t *testing.T) {
	srv := agenttest.NewServer(t)
	b := newFakeBackend("fake")
	m := newTestManager(srv, b)
	if st, _ := m.State(); st != (State{}) {
		t.Fatalf("initial state %+v", st)
	}
	r := start(t, m.Run)
	b.insert(t, "reader 0", newFakeCard())
	b.insert(t, "reader 1", newFakeCard())
	waitState(t, m, "2 cards", func(s State) bool { return s.Cards == 2 && s.Connected == 0 && !s.EverConnected })
	c0 := srv.Accept()
	c0.Hello()
	waitState(t, m, "1 connected", func(s State) bool { return s.Connected == 1 && s.EverConnected })
	c1 := srv.Accept()
	c1.Hello()
	waitState(t, m, "2 connected", func(s State) bool { return s.Connected == 2 })
	c0.Close() // the server drops one: it reconnects
	waitState(t, m, "1 connected", func(s State) bool { return s.Connected == 1 && s.Cards == 2 })
	srv.Accept().Hello()
	waitState(t, m, "2 connected again", func(s State) bool { return s.Connected == 2 })
	b.remove(t, "reader 1")
	waitState(t, m, "1 card", func(s State) bool { return s.Cards == 1 && s.Connected == 1 })
	r.cancel()
	if err := r.wait(t); err != nil {
		t.Fatal(err)
	}
	if st, _ := m.State(); st != (State{EverConnected: true}) {
		t.Errorf("state after Run: %+v", st)
	}
}

// TestManagerPing: Ping is answered by Run's loop, and times out when
// the loop does not run.
func TestManagerPing(t *testing.T) {
	srv := agenttest.NewServer(t)
	m := newTestManager(srv, newFakeBackend("fake"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	if err := m.Ping(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Ping without Run = %v", err)
	}
	r := start(t, m.Run)
	if err := m.Ping(context.Background()); err != nil {
		t.Fatalf("Ping = %v", err)
	}
	r.cancel()
	r.wait(t)
}
