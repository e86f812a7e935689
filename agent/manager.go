package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// OpenTimeout bounds SlotEvent.Open (card power-up and ATR) for one card.
var OpenTimeout = 30 * time.Second

// ErrNoBackends is returned by Manager.Run when it has nothing to run.
var ErrNoBackends = errors.New("no backends")

// A Manager runs backends and keeps exactly one Session per present card.
//
// For every SlotEvent: Present starts a slot worker that opens the card and
// runs a Session for it (a worker already running for that slot is stopped
// first: the new one waits until the old session has closed its WebSocket
// and its card); not Present stops the slot's worker, which closes the
// WebSocket cleanly and then the card. A session that ends by itself (the
// card failed with card.ErrRemoved, or Open failed) leaves the slot idle
// until the backend reports the card again.
//
// Ownership: Run's goroutine owns the worker table; each worker goroutine
// owns its card from Open to Close. Run waits for every backend and every
// worker before it returns.
type Manager struct {
	cfg      Config
	backends []Backend
	log      *slog.Logger
}

// NewManager returns a Manager that puts the cards of backends on the
// server described by cfg.
func NewManager(cfg Config, backends ...Backend) *Manager {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Manager{cfg: cfg, backends: backends, log: log}
}

// worker is the goroutine that serves one slot.
type worker struct {
	cancel context.CancelFunc
	done   chan struct{} // closed when the worker has closed its card
}

// Run runs every backend and the sessions of their cards until ctx is
// done (then it closes every session cleanly and returns nil) or until no
// backend is left running (then it returns their errors joined). A bad
// server URL is reported at once.
func (m *Manager) Run(ctx context.Context) error {
	if len(m.backends) == 0 {
		return ErrNoBackends
	}
	if err := checkServerURL(m.cfg.Server); err != nil {
		return err
	}
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	type result struct {
		backend string
		err     error
	}
	events := make(chan SlotEvent)
	results := make(chan result, len(m.backends))
	for _, b := range m.backends {
		go func() {
			err := b.Run(ctx, events)
			results <- result{b.Name(), err}
		}()
	}

	var wg sync.WaitGroup
	workers := make(map[SlotID]*worker)
	stop := func(id SlotID) {
		if w, ok := workers[id]; ok {
			w.cancel()
			delete(workers, id)
		}
	}
	var errs []error
	for running := len(m.backends); running > 0; {
		select {
		case ev := <-events:
			if !ev.Present {
				if _, ok := workers[ev.Slot]; ok {
					m.log.Info("card removed", "slot", ev.Slot.String())
				}
				stop(ev.Slot)
				continue
			}
			if ev.Open == nil {
				m.log.Error("backend reported a card without a way to open it", "slot", ev.Slot.String())
				continue
			}
			prev := workers[ev.Slot]
			stop(ev.Slot)
			m.log.Info("card present", "slot", ev.Slot.String())
			workers[ev.Slot] = m.start(ctx, &wg, ev, prev)
		case r := <-results:
			running--
			if parent.Err() != nil {
				continue
			}
			if r.err == nil {
				r.err = errors.New("stopped")
			}
			err := fmt.Errorf("backend %s: %w", r.backend, r.err)
			m.log.Error("backend stopped", "backend", r.backend, "err", r.err)
			errs = append(errs, err)
			for id := range workers {
				if id.Backend == r.backend {
					stop(id)
				}
			}
		}
	}
	for id := range workers {
		stop(id)
	}
	wg.Wait()
	if parent.Err() != nil {
		return nil
	}
	return errors.Join(errs...)
}

// start runs a worker for the card of ev. It waits for prev (the slot's
// previous worker, if any) to finish before it opens the card.
func (m *Manager) start(ctx context.Context, wg *sync.WaitGroup, ev SlotEvent, prev *worker) *worker {
	wctx, cancel := context.WithCancel(ctx)
	w := &worker{cancel: cancel, done: make(chan struct{})}
	wg.Go(func() {
		defer close(w.done)
		defer cancel()
		if prev != nil {
			<-prev.done
		}
		m.serveSlot(wctx, ev)
	})
	return w
}

// serveSlot opens the card of ev and runs its Session until ctx is done or
// the session ends.
func (m *Manager) serveSlot(ctx context.Context, ev SlotEvent) {
	log := m.log.With("slot", ev.Slot.String())
	octx, ocancel := context.WithTimeout(ctx, OpenTimeout)
	c, err := ev.Open(octx)
	ocancel()
	if err != nil {
		if ctx.Err() == nil {
			log.Error("opening card", "err", err)
		}
		return
	}
	defer func() {
		if err := c.Close(); err != nil {
			log.Warn("closing card", "err", err)
		}
	}()
	s := NewSession(m.cfg, c, ev.Slot.ReaderName())
	if err := s.Run(ctx); err != nil {
		log.Warn("session ended", "err", err)
	}
}
