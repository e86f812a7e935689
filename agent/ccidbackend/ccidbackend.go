// Package ccidbackend plugs the USB CCID driver (package ccid) into the
// agent: it implements agent.Backend over a ccid.Driver.
//
// Data flow: USB readers ── ccid.Driver.Run ──ccid.Event──► Backend.Run
// ──SlotEvent──► agent.Manager, which calls SlotEvent.Open (powering the
// card up) from the goroutine that owns the card.
//
// Each slot of each claimed reader is one agent slot (SlotID{Backend:
// "ccid", Reader: reader name, Index: slot}); the slots of composite
// devices are numbered across their CCID interfaces. Readers the driver
// does not take (claimed by pcscd, no permission, character-level) are
// logged by Run and listed by Probe with the reason.
//
// The backend owns one Driver at a time: Probe creates it (its Open
// functions stay valid until Close or Run), Run reuses or creates it and
// closes it when it returns, and Close releases it. Keeping it a package
// of its own leaves agent/ free of cgo unless a binary links this.
package ccidbackend

import (
	"context"
	"log/slog"
	"sync"

	"github.com/wsrc-go/wsrc/agent"
	"github.com/wsrc-go/wsrc/ccid"
)

// Name is the backend's name in SlotIDs, logs and `wsrc-agent readers`.
const Name = "ccid"

// Config configures the backend.
type Config struct {
	// Options configure the driver (Bus nil: libusb and netlink).
	Options ccid.Options
}

// Backend is the CCID backend. It implements agent.Backend.
type Backend struct {
	cfg Config
	log *slog.Logger

	mu sync.Mutex
	d  *ccid.Driver // guarded by mu; nil until Probe or Run
}

var _ agent.Backend = (*Backend)(nil)

// New returns the backend. It opens nothing yet.
func New(cfg Config) *Backend {
	log := cfg.Options.Logger
	if log == nil {
		log = slog.Default()
	}
	cfg.Options.Logger = log
	return &Backend{cfg: cfg, log: log}
}

// Name returns "ccid".
func (b *Backend) Name() string { return Name }

// driver returns the backend's Driver, creating it when needed.
func (b *Backend) driver() (*ccid.Driver, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.d != nil {
		return b.d, nil
	}
	d, err := ccid.New(b.cfg.Options)
	if err != nil {
		return nil, err
	}
	b.d = d
	return d, nil
}

// Close releases the readers (and with them every card opened through
// Probe). It is safe to call more than once.
func (b *Backend) Close() error {
	b.mu.Lock()
	d := b.d
	b.d = nil
	b.mu.Unlock()
	if d == nil {
		return nil
	}
	return d.Close()
}

func (b *Backend) slot(ev ccid.Event) agent.SlotID {
	return agent.SlotID{Backend: Name, Reader: ev.Reader.Name, Index: ev.Slot}
}

// Run reports card changes until ctx is done; see agent.Backend. It
// releases every reader before it returns.
func (b *Backend) Run(ctx context.Context, events chan<- agent.SlotEvent) error {
	d, err := b.driver()
	if err != nil {
		return err
	}
	defer b.Close()
	evs := make(chan ccid.Event)
	done := make(chan error, 1)
	rctx, cancel := context.WithCancel(ctx)
	go func() { done <- d.Run(rctx, evs) }()
	defer func() {
		cancel()
		<-done
	}()
	for {
		var ev ccid.Event
		select {
		case ev = <-evs:
		case err := <-done:
			done <- err
			return err
		case <-ctx.Done():
			return nil
		}
		var se agent.SlotEvent
		switch ev.Kind {
		case ccid.ReaderAdded:
			if ev.Reader.Status != ccid.Claimed {
				b.log.Warn("ccid: reader not used", "reader", ev.Reader.Name, "status", ev.Reader.Status,
					"reason", ev.Reader.Reason)
			}
			continue
		case ccid.ReaderRemoved:
			continue
		case ccid.CardInserted:
			se = agent.SlotEvent{Slot: b.slot(ev), Present: true, Open: ev.Open}
		case ccid.CardRemoved:
			se = agent.SlotEvent{Slot: b.slot(ev)}
		}
		select {
		case events <- se:
		case <-ctx.Done():
			return nil
		}
	}
}

// Probe scans for readers and lists them with their slots; see
// agent.Backend. The Open functions of present cards stay valid until
// Close (or Run).
func (b *Backend) Probe(ctx context.Context) agent.BackendReport {
	r := agent.BackendReport{Backend: Name, Status: agent.StatusLoaded}
	d, err := b.driver()
	if err != nil {
		r.Status, r.Reason = agent.StatusFailed, err.Error()
		return r
	}
	infos, err := d.Readers(ctx)
	if err != nil {
		r.Status, r.Reason = agent.StatusFailed, err.Error()
		return r
	}
	claimed := 0
	for _, ri := range infos {
		rr := agent.ReaderReport{Name: ri.Name, Reason: ri.Reason, Details: ri.Summary()}
		switch ri.Status {
		case ccid.Claimed:
			rr.Status = agent.StatusLoaded
			rr.Reason = ""
			claimed++
		case ccid.Skipped:
			rr.Status = agent.StatusSkipped
		default:
			rr.Status = agent.StatusFailed
		}
		for _, s := range ri.Slots {
			rr.Slots = append(rr.Slots, agent.SlotReport{Index: s.Index, Present: s.Present, Open: s.Open})
		}
		r.Readers = append(r.Readers, rr)
	}
	switch {
	case len(infos) == 0:
		r.Status, r.Reason = agent.StatusSkipped, "no USB CCID readers"
	case claimed == 0:
		r.Status, r.Reason = agent.StatusSkipped, "no USB CCID reader could be claimed"
	}
	return r
}
