package simbackend

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"

	"github.com/wsrc-go/wsrc/agent"
	"github.com/wsrc-go/wsrc/agent/agenttest"
	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/card/sim"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestIdentities(t *testing.T) {
	if ICCID(0) != sim.DefaultICCID || EID(0) != sim.DefaultEID || IMSI(0) != sim.DefaultIMSI {
		t.Errorf("card 0 = %s %s %s, want the recorded card's identities", ICCID(0), EID(0), IMSI(0))
	}
	for _, tc := range []struct {
		i                int
		iccid, eid, imsi string
	}{
		{1, "8949440000001155322", "89049032123451234512345678901332", "001010123456790"},
		{9, "8949440000001155405", "89049032123451234512345678902108", "001010123456798"},
	} {
		if got := ICCID(tc.i); got != tc.iccid {
			t.Errorf("ICCID(%d) = %s, want %s", tc.i, got, tc.iccid)
		}
		if got := EID(tc.i); got != tc.eid {
			t.Errorf("EID(%d) = %s, want %s", tc.i, got, tc.eid)
		}
		if got := IMSI(tc.i); got != tc.imsi {
			t.Errorf("IMSI(%d) = %s, want %s", tc.i, got, tc.imsi)
		}
	}
	seen := map[string]bool{}
	for i := range MaxCards {
		iccid, eid := ICCID(i), EID(i)
		if len(iccid) != 19 || luhnValid(iccid) == false {
			t.Fatalf("ICCID(%d) = %s: bad length or Luhn digit", i, iccid)
		}
		n, _ := new(big.Int).SetString(eid, 10)
		if len(eid) != 32 || new(big.Int).Mod(n, big.NewInt(97)).Int64() != 1 {
			t.Fatalf("EID(%d) = %s: bad length or check digits", i, eid)
		}
		if seen[iccid] || seen[eid] {
			t.Fatalf("card %d repeats an identity", i)
		}
		seen[iccid], seen[eid] = true, true
		if err := (&Backend{}).CardConfig(i).Validate(); err != nil {
			t.Fatalf("card %d: %v", i, err)
		}
	}
}

// luhnValid checks a full number, check digit included.
func luhnValid(s string) bool {
	return luhn(s[:len(s)-1]) == int(s[len(s)-1]-'0')
}

func TestNewRejects(t *testing.T) {
	for _, cfg := range []Config{{N: -1}, {N: MaxCards + 1}, {N: 1, Protocol: 7}} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
	b, _ := New(Config{N: 2})
	if err := b.Remove(2); !errors.Is(err, ErrNoReader) {
		t.Errorf("Remove(2) = %v", err)
	}
	if err := b.Insert(-1); !errors.Is(err, ErrNoReader) {
		t.Errorf("Insert(-1) = %v", err)
	}
}

func next(t *testing.T, ch <-chan agent.SlotEvent) agent.SlotEvent {
	t.Helper()
	select {
	case ev := <-ch:
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no event within 10s")
		return agent.SlotEvent{}
	}
}

func TestRunEvents(t *testing.T) {
	b, err := New(Config{N: 3, Protocol: sim.T1})
	if err != nil {
		t.Fatal(err)
	}
	b.Remove(2) // before Run: not reported at all
	ctx, cancel := context.WithCancel(context.Background())
	events := make(chan agent.SlotEvent)
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx, events) }()
	for i := range 2 {
		ev := next(t, events)
		if !ev.Present || ev.Slot != (agent.SlotID{Backend: "sim", Reader: ReaderName(i)}) || ev.Open == nil {
			t.Fatalf("event %d = %+v", i, ev)
		}
		c, err := ev.Open(ctx)
		if err != nil {
			t.Fatal(err)
		}
		id, err := card.Identify(ctx, c)
		if err != nil || id.ICCID != ICCID(i) || id.EID != EID(i) {
			t.Errorf("card %d identifies as %+v, %v", i, id, err)
		}
		if string(c.ATR()) != string(sim.ATRT1) {
			t.Errorf("card %d ATR %x, want the T=1 one", i, c.ATR())
		}
		c.Close()
	}
	b.Remove(0)
	b.Remove(0) // no change: no event
	b.Insert(2)
	if ev := next(t, events); ev.Present || ev.Slot.Reader != ReaderName(0) {
		t.Errorf("after Remove(0): %+v", ev)
	}
	if ev := next(t, events); !ev.Present || ev.Slot.Reader != ReaderName(2) {
		t.Errorf("after Insert(2): %+v", ev)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v", err)
	}
	if _, err := b.open(0)(ctx); err == nil {
		t.Error("Open with a cancelled ctx succeeded")
	}
}

func TestProbeAndDescribe(t *testing.T) {
	b0, _ := New(Config{})
	if r := b0.Probe(context.Background()); r.Status != agent.StatusSkipped || r.Reason == "" {
		t.Errorf("N=0: %+v", r)
	}
	b, _ := New(Config{N: 2})
	b.Remove(1)
	reps := agent.Describe(context.Background(), b)
	if len(reps) != 1 || reps[0].Status != agent.StatusLoaded || len(reps[0].Readers) != 2 {
		t.Fatalf("Describe = %+v", reps)
	}
	s0, s1 := reps[0].Readers[0].Slots[0], reps[0].Readers[1].Slots[0]
	if !s0.Present || s0.Err != "" || s0.Identities["ICCID"] != ICCID(0) || s0.Identities["EID"] != EID(0) || string(s0.ATR) != string(sim.ATRT0) {
		t.Errorf("reader 0: %+v", s0)
	}
	if s1.Present || s1.ATR != nil {
		t.Errorf("reader 1 (card removed): %+v", s1)
	}
}

// TestWithManager: two simulated cards are two sessions that the server
// identifies as two different cards; removing one closes its session and
// inserting it opens a fresh one.
func TestWithManager(t *testing.T) {
	srv := agenttest.NewServer(t)
	b, _ := New(Config{N: 2, T0GetResponse: true})
	m := agent.NewManager(agent.Config{
		Server: srv.URL(),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Timing: agent.Timing{MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond, CloseWait: 100 * time.Millisecond},
	}, b)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()

	conns := map[string]*agenttest.Conn{}
	for range 2 {
		conn := srv.Accept()
		h := conn.Hello()
		id, err := card.Identify(ctx, conn.Transmitter())
		if err != nil {
			t.Fatal(err)
		}
		i := map[string]int{ReaderName(0): 0, ReaderName(1): 1}[h.Reader]
		if id.ICCID != ICCID(i) || id.EID != EID(i) {
			t.Errorf("%s identifies as %+v", h.Reader, id)
		}
		conns[h.Reader] = conn
	}
	b.Remove(1)
	if code, _ := conns[ReaderName(1)].ExpectClose(); code != websocket.CloseGoingAway {
		t.Errorf("close code on removal %d", code)
	}
	b.Insert(1)
	conn := srv.Accept()
	if h := conn.Hello(); h.Reader != ReaderName(1) {
		t.Errorf("new session from %q", h.Reader)
	}
	cancel()
	conn.ExpectClose()
	conns[ReaderName(0)].ExpectClose()
	if err := <-done; err != nil {
		t.Errorf("Run = %v", err)
	}
}
