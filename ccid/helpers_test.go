package ccid_test

import (
	"context"
	"encoding/hex"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/card/sim"
	"github.com/wsrc-go/wsrc/ccid"
	"github.com/wsrc-go/wsrc/ccid/ccidsim"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// quiet is the logger of every test driver (set WSRC_CCID_DEBUG=1 to see
// the driver's records).
func quiet() *slog.Logger {
	if os.Getenv("WSRC_CCID_DEBUG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// harness runs a Driver over a simulated bus and collects its events.
type harness struct {
	t      testing.TB
	bus    *ccidsim.Bus
	d      *ccid.Driver
	events chan ccid.Event
	cancel context.CancelFunc
	done   chan error
}

// run starts a Driver on bus; the test's cleanup stops it.
func run(t testing.TB, bus *ccidsim.Bus, opts ccid.Options) *harness {
	t.Helper()
	opts.Bus = bus
	if opts.Logger == nil {
		opts.Logger = quiet()
	}
	d, err := ccid.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{t: t, bus: bus, d: d, events: make(chan ccid.Event, 64), cancel: cancel, done: make(chan error, 1)}
	go func() { h.done <- d.Run(ctx, h.events) }()
	t.Cleanup(h.stop)
	return h
}

// stop ends Run and closes the driver (idempotent).
func (h *harness) stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	if err := <-h.done; err != nil {
		h.t.Errorf("Run: %v", err)
	}
	h.cancel = nil
	if err := h.d.Close(); err != nil {
		h.t.Errorf("Close: %v", err)
	}
}

// next returns the next event, which must be of kind k.
func (h *harness) next(k ccid.EventKind) ccid.Event {
	h.t.Helper()
	select {
	case ev := <-h.events:
		if ev.Kind != k {
			h.t.Fatalf("event %v (%s slot %d, %v %s), want %v", ev.Kind, ev.Reader.Name, ev.Slot,
				ev.Reader.Status, ev.Reader.Reason, k)
		}
		return ev
	case <-time.After(time.Minute):
		h.t.Fatalf("no %v event", k)
	}
	return ccid.Event{}
}

// quietFor checks that no event arrives for d (virtual time in bubbles).
func (h *harness) quietFor(d time.Duration) {
	h.t.Helper()
	select {
	case ev := <-h.events:
		h.t.Fatalf("unexpected event %v slot %d", ev.Kind, ev.Slot)
	case <-time.After(d):
	}
}

// open waits for the reader and a card in slot and opens it.
func (h *harness) openFirst(ctx context.Context, slots int) []card.Card {
	h.t.Helper()
	ev := h.next(ccid.ReaderAdded)
	if ev.Reader.Status != ccid.Claimed {
		h.t.Fatalf("reader %s: %v %s", ev.Reader.Name, ev.Reader.Status, ev.Reader.Reason)
	}
	cards := make([]card.Card, slots)
	for range slots {
		ev := h.next(ccid.CardInserted)
		c, err := ev.Open(ctx)
		if err != nil {
			h.t.Fatalf("opening slot %d: %v", ev.Slot, err)
		}
		h.t.Cleanup(func() { c.Close() })
		cards[ev.Slot] = c
	}
	return cards
}

// newCard returns a simulated UICC speaking T=0 the way a real card
// does (61xx / 6Cxx), or T=1.
func newCard(proto sim.Protocol) *sim.Card {
	return sim.New(sim.Config{Protocol: proto, T0GetResponse: proto == sim.T0, USIM: true})
}

// transmit sends hex and returns the response in hex.
func transmit(t testing.TB, ctx context.Context, c card.Card, cmd string) string {
	t.Helper()
	r, err := c.Transmit(ctx, unhex(t, cmd))
	if err != nil {
		t.Fatalf("Transmit(%s): %v", cmd, err)
	}
	return hex.EncodeToString(r)
}

func sw(resp string) string {
	if len(resp) < 4 {
		return resp
	}
	return resp[len(resp)-4:]
}
