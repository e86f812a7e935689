package pcscbackend

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/wsrc-go/wsrc/agent"
	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/card/sim"
	"github.com/wsrc-go/wsrc/internal/testenv/pcscdtest"
	"github.com/wsrc-go/wsrc/internal/vpcd"
	"github.com/wsrc-go/wsrc/pcsc"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestNewRejectsBadFilter(t *testing.T) {
	if _, err := New(Config{Filter: pcsc.Filter{Include: []string{"["}}}); err == nil {
		t.Fatal("bad pattern accepted")
	}
}

func TestRunMapsEvents(t *testing.T) {
	b, err := New(Config{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if b.Name() != "pcsc" {
		t.Fatalf("Name = %q", b.Name())
	}
	atr := []byte{0x3b, 0x00}
	b.watch = func(ctx context.Context, _ pcsc.WatchOptions, fn func(pcsc.ReaderEvent)) error {
		fn(pcsc.ReaderEvent{Reader: "A"})
		fn(pcsc.ReaderEvent{Reader: "A", CardPresent: true, ATR: atr})
		fn(pcsc.ReaderEvent{Reader: "A", CardPresent: true, Mute: true})
		fn(pcsc.ReaderEvent{Reader: "A", Gone: true})
		<-ctx.Done()
		fn(pcsc.ReaderEvent{Reader: "B", Gone: true}) // must not block after ctx is done
		return nil
	}
	openErr := errors.New("boom")
	b.open = func(ctx context.Context, reader string, _ pcsc.OpenOptions) (*pcsc.Card, error) {
		return nil, openErr
	}
	ctx, cancel := context.WithCancel(context.Background())
	events := make(chan agent.SlotEvent)
	done := make(chan error)
	go func() { done <- b.Run(ctx, events) }()
	want := []bool{false, true, false, false}
	for i, p := range want {
		ev := <-events
		if ev.Slot != (agent.SlotID{Backend: "pcsc", Reader: "A"}) || ev.Present != p || (ev.Open != nil) != p {
			t.Fatalf("event %d = %+v, want present=%v", i, ev, p)
		}
		if p {
			c, err := ev.Open(ctx)
			if c != nil || !errors.Is(err, openErr) {
				t.Fatalf("Open = %v, %v; want nil interface and the error", c, err)
			}
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
}

func TestProbeStatuses(t *testing.T) {
	b, _ := New(Config{})
	for _, tt := range []struct {
		name   string
		states []pcsc.ReaderEvent
		err    error
		status agent.Status
	}{
		{"pcscd down", nil, &pcsc.Error{Op: "SCardEstablishContext", Code: pcsc.CodeNoService}, agent.StatusSkipped},
		{"other error", nil, &pcsc.Error{Op: "SCardListReaders", Code: pcsc.CodeInternalError}, agent.StatusFailed},
		{"no readers", []pcsc.ReaderEvent{}, nil, agent.StatusSkipped},
		{"readers", []pcsc.ReaderEvent{
			{Reader: "A", CardPresent: true, ATR: []byte{0x3b, 0}},
			{Reader: "B"},
			{Reader: "C", CardPresent: true, Mute: true},
		}, nil, agent.StatusLoaded},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b.snapshot = func(context.Context, pcsc.Filter) ([]pcsc.ReaderEvent, error) { return tt.states, tt.err }
			r := b.Probe(context.Background())
			if r.Status != tt.status || r.Backend != "pcsc" || (tt.status != agent.StatusLoaded && r.Reason == "") {
				t.Fatalf("report %+v", r)
			}
			if len(r.Readers) != len(tt.states) {
				t.Fatalf("%d readers reported, want %d", len(r.Readers), len(tt.states))
			}
			for i, rr := range r.Readers {
				s := rr.Slots[0]
				st := tt.states[i]
				if rr.Name != st.Reader || s.Present != (st.CardPresent && !st.Mute) || (s.Open != nil) != s.Present || (st.Mute && s.Err == "") {
					t.Errorf("reader %d: %+v", i, rr)
				}
			}
		})
	}
}

// TestProbeFilter: readers the filter leaves out are listed as skipped,
// with the reason, and their cards are not opened.
func TestProbeFilter(t *testing.T) {
	b, err := New(Config{Filter: pcsc.Filter{Include: []string{"A*", "/^B/"}, Exclude: []string{"*2"}}})
	if err != nil {
		t.Fatal(err)
	}
	atr := []byte{0x3b, 0}
	states := []pcsc.ReaderEvent{
		{Reader: "A1", CardPresent: true, ATR: atr},
		{Reader: "A2", CardPresent: true, ATR: atr},
		{Reader: "B", CardPresent: true, ATR: atr},
		{Reader: "C", CardPresent: true, ATR: atr},
	}
	b.snapshot = func(_ context.Context, f pcsc.Filter) ([]pcsc.ReaderEvent, error) {
		if len(f.Include)+len(f.Exclude) != 0 {
			t.Errorf("snapshot with filter %+v, want every reader", f)
		}
		return states, nil
	}
	b.open = func(ctx context.Context, reader string, _ pcsc.OpenOptions) (*pcsc.Card, error) {
		return nil, &pcsc.Error{Op: "SCardConnect", Reader: reader, Code: pcsc.CodeSharingViolation}
	}
	r := b.Probe(context.Background())
	if r.Status != agent.StatusLoaded || len(r.Readers) != 4 {
		t.Fatalf("report %+v", r)
	}
	want := []struct {
		status agent.Status
		reason string
	}{
		{agent.StatusLoaded, ""},
		{agent.StatusSkipped, `excluded by reader exclude pattern "*2"`},
		{agent.StatusLoaded, ""},
		{agent.StatusSkipped, "matches no reader include pattern"},
	}
	for i, rr := range r.Readers {
		s := rr.Slots[0]
		if rr.Status != want[i].status || rr.Reason != want[i].reason || !s.Present || !bytes.Equal(s.ATR, atr) ||
			(s.Open != nil) != (want[i].status == agent.StatusLoaded) {
			t.Errorf("reader %s: %+v, want %+v", rr.Name, rr, want[i])
		}
	}
	if _, err := r.Readers[0].Slots[0].Open(context.Background()); !errors.Is(err, pcsc.CodeSharingViolation) ||
		!strings.Contains(err.Error(), "in use by another application") {
		t.Errorf("Open in a listing = %v, want a sharing violation with a hint", err)
	}

	states = states[3:]
	if r := b.Probe(context.Background()); r.Status != agent.StatusSkipped || len(r.Readers) != 1 ||
		r.Reason != "the reader filter selects none of pcscd's readers" {
		t.Errorf("nothing selected: report %+v", r)
	}
}

// TestRealStack runs the backend against a private pcscd with a vpcd card.
func TestRealStack(t *testing.T) {
	if testing.Short() {
		t.Skip("real PC/SC stack test in -short mode")
	}
	d := pcscdtest.Start(t)
	ctx := context.Background()
	b, err := New(Config{Logger: quiet, Filter: pcsc.Filter{Include: []string{pcscdtest.ReaderName + "*"}},
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	slot := vpcd.NewSlot(d.SlotAddr(0))
	t.Cleanup(func() { slot.Remove() })
	cfg := sim.Config{ICCID: "89882119900000000017"}
	if err := slot.Insert(ctx, sim.New(cfg)); err != nil {
		t.Fatal(err)
	}

	rctx, cancel := context.WithCancel(ctx)
	events := make(chan agent.SlotEvent)
	done := make(chan error)
	go func() { done <- b.Run(rctx, events) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	}()
	next := func(reader string, present bool) agent.SlotEvent {
		t.Helper()
		timer := time.NewTimer(30 * time.Second)
		defer timer.Stop()
		for {
			select {
			case ev := <-events:
				if ev.Slot.Reader == reader && ev.Present == present {
					return ev
				}
			case <-timer.C:
				t.Fatalf("no event %s present=%v", reader, present)
			}
		}
	}
	ev := next(d.Reader(0), true)
	c, err := ev.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id, err := card.Identify(ctx, c)
	if err != nil || id.ICCID != cfg.ICCID {
		t.Fatalf("Identify = %+v, %v", id, err)
	}
	c.Close()

	r := b.Probe(ctx)
	if r.Status != agent.StatusLoaded || len(r.Readers) != 2 || !r.Readers[0].Slots[0].Present ||
		!bytes.Equal(r.Readers[0].Slots[0].ATR, sim.ATRT0) || r.Readers[1].Slots[0].Present {
		t.Fatalf("Probe = %+v", r)
	}

	slot.Remove()
	next(d.Reader(0), false)
	d.Stop()
	if r := b.Probe(ctx); r.Status != agent.StatusSkipped || r.Reason != "pcscd not running" {
		t.Fatalf("Probe with pcscd stopped = %+v", r)
	}
}
