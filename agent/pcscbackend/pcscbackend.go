// Package pcscbackend plugs the PC/SC backend (package pcsc) into the
// agent: it implements agent.Backend over pcsc.Watch, pcsc.Open and
// pcsc.Snapshot.
//
// Data flow: pcscd ── pcsc.Watch ──ReaderEvent──► Backend.Run ──SlotEvent──►
// agent.Manager, which calls SlotEvent.Open (pcsc.Open) from the goroutine
// that owns the card.
//
// Each PC/SC reader is one agent slot (SlotID{Backend: "pcsc", Reader:
// name, Index: 0}): pcsc-lite already names every slot of a multi-slot
// reader as a reader of its own. A card that is present but mute (no ATR)
// is reported as not present, since it cannot be opened. pcscd stopping is
// not an error for Run: its readers are reported not present and come
// back when pcscd does (see pcsc.Watch).
//
// It is a package of its own so that agent/ does not need cgo unless the
// binary links this backend.
package pcscbackend

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/wsrc-go/wsrc/agent"
	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/pcsc"
)

// Name is the backend's name in SlotIDs, logs and `wsrc-agent readers`.
const Name = "pcsc"

// Config configures the backend.
type Config struct {
	// Filter selects readers (glob or /regexp/ patterns, see pcsc.Filter).
	Filter pcsc.Filter
	// Open says how cards are connected (exclusive by default).
	Open pcsc.OpenOptions
	// Logger receives pcscd outages; nil means slog.Default().
	Logger *slog.Logger
	// MinBackoff and MaxBackoff bound pcscd reconnection (see
	// pcsc.WatchOptions); zero means the pcsc defaults.
	MinBackoff, MaxBackoff time.Duration
	// PollTimeout bounds each wait of the reader watcher (see
	// pcsc.WatchOptions); zero means pcsc.DefaultPollTimeout.
	PollTimeout time.Duration
}

// Backend is the PC/SC backend. It implements agent.Backend.
type Backend struct {
	cfg Config // immutable after New

	// The pcsc entry points, replaced by tests.
	watch    func(context.Context, pcsc.WatchOptions, func(pcsc.ReaderEvent)) error
	open     func(context.Context, string, pcsc.OpenOptions) (*pcsc.Card, error)
	snapshot func(context.Context, pcsc.Filter) ([]pcsc.ReaderEvent, error)
}

var _ agent.Backend = (*Backend)(nil)

// New returns the backend, or an error for a bad reader pattern.
func New(cfg Config) (*Backend, error) {
	if err := cfg.Filter.Validate(); err != nil {
		return nil, fmt.Errorf("pcsc backend: %w", err)
	}
	return &Backend{cfg: cfg, watch: pcsc.Watch, open: pcsc.Open, snapshot: pcsc.Snapshot}, nil
}

// Name returns "pcsc".
func (b *Backend) Name() string { return Name }

func (b *Backend) openFunc(reader string) func(context.Context) (card.Card, error) {
	return func(ctx context.Context) (card.Card, error) {
		c, err := b.open(ctx, reader, b.cfg.Open)
		if err != nil {
			return nil, err // not a typed nil in the interface
		}
		return c, nil
	}
}

func (b *Backend) slot(reader string) agent.SlotID {
	return agent.SlotID{Backend: Name, Reader: reader}
}

// Run reports card changes until ctx is done; see agent.Backend.
func (b *Backend) Run(ctx context.Context, events chan<- agent.SlotEvent) error {
	log := b.cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	opts := pcsc.WatchOptions{Filter: b.cfg.Filter, Logger: log, MinBackoff: b.cfg.MinBackoff, MaxBackoff: b.cfg.MaxBackoff,
		PollTimeout: b.cfg.PollTimeout}
	return b.watch(ctx, opts, func(ev pcsc.ReaderEvent) {
		se := agent.SlotEvent{Slot: b.slot(ev.Reader)}
		switch {
		case ev.Gone:
			log.Info("pcsc: reader gone", "reader", ev.Reader)
		case ev.Mute:
			log.Warn("pcsc: card does not answer to reset", "reader", ev.Reader)
		case ev.CardPresent:
			se.Present = true
			se.Open = b.openFunc(ev.Reader)
		}
		select {
		case events <- se:
		case <-ctx.Done():
		}
	})
}

// Probe lists pcscd's readers and their cards; see agent.Backend. Readers
// that the reader filter leaves out are listed too, skipped with the
// pattern that excluded them, and their cards are never opened.
func (b *Backend) Probe(ctx context.Context) agent.BackendReport {
	r := agent.BackendReport{Backend: Name, Status: agent.StatusLoaded}
	states, err := b.snapshot(ctx, pcsc.Filter{})
	switch {
	case errors.Is(err, pcsc.ErrServiceUnavailable):
		r.Status, r.Reason = agent.StatusSkipped, "pcscd not running"
		return r
	case err != nil:
		r.Status, r.Reason = agent.StatusFailed, err.Error()
		return r
	case len(states) == 0:
		r.Status, r.Reason = agent.StatusSkipped, "pcscd has no readers"
		return r
	}
	selected := 0
	for _, st := range states {
		rr := agent.ReaderReport{Name: st.Reader, Status: agent.StatusLoaded, Details: "PC/SC"}
		s := agent.SlotReport{Present: st.CardPresent && !st.Mute, ATR: st.ATR}
		if why := b.cfg.Filter.Why(st.Reader); why != "" {
			rr.Status, rr.Reason = agent.StatusSkipped, why
		} else {
			selected++
			if s.Present {
				s.Open = b.probeOpenFunc(st.Reader)
			}
		}
		if st.Mute {
			s.Err = "card does not answer to reset"
		}
		rr.Slots = []agent.SlotReport{s}
		r.Readers = append(r.Readers, rr)
	}
	if selected == 0 {
		r.Status, r.Reason = agent.StatusSkipped, "the reader filter selects none of pcscd's readers"
	}
	return r
}

// probeOpenFunc is openFunc with a hint for the usual reason a listing
// cannot open a card.
func (b *Backend) probeOpenFunc(reader string) func(context.Context) (card.Card, error) {
	open := b.openFunc(reader)
	return func(ctx context.Context) (card.Card, error) {
		c, err := open(ctx)
		if errors.Is(err, pcsc.CodeSharingViolation) {
			return nil, fmt.Errorf("%w (the card is in use by another application, such as a running wsrc-agent)", err)
		}
		return c, err
	}
}
