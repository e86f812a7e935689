package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/wsrc-go/wsrc/card"
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
// WebSocket cleanly (close reason "card removed") and then the card.
//
// A worker keeps its slot served for as long as the backend has not
// reported the card removed: when Open fails (the card is held by another
// application, is not ready yet, ...) or the session ends by itself (the
// card failed with card.ErrRemoved: it was pulled, or only its handle died,
// as when pcscd restarts or another application resets a shared card), the
// worker waits (Timing.MinBackoff doubling up to Timing.MaxBackoff, reset
// after a session that stood for Timing.StableAfter) and opens the card
// again, each time with a fresh session and so a fresh identification by
// the server. A card that was really pulled fails to open until the
// backend's not-Present event stops the worker.
//
// Ownership: Run's goroutine owns the worker table; each worker goroutine
// owns its card from Open to Close. Run waits for every backend and every
// worker before it returns.
type Manager struct {
	// Immutable after NewManager.
	cfg      Config
	timing   Timing
	backends []Backend
	log      *slog.Logger
	// jitter returns a random duration in [0, d]; tests replace it.
	jitter func(d time.Duration) time.Duration
	// ping carries Ping's requests to Run's loop, which closes each.
	ping chan chan struct{}

	mu      sync.Mutex
	state   State         // guarded by mu
	changed chan struct{} // guarded by mu: closed and replaced when state changes
}

// State is what a Manager serves, for status lines and readiness.
type State struct {
	// Cards is the number of cards present: one slot worker each.
	Cards int
	// Connected is the number of card sessions the server has accepted
	// (hello_ack received) and that are still up.
	Connected int
	// EverConnected is set once any session was accepted since the
	// Manager was made.
	EverConnected bool
}

// NewManager returns a Manager that puts the cards of backends on the
// server described by cfg.
func NewManager(cfg Config, backends ...Backend) *Manager {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Manager{cfg: cfg, timing: cfg.Timing.withDefaults(), backends: backends, log: log, jitter: randJitter,
		ping: make(chan chan struct{}), changed: make(chan struct{})}
}

// State returns the current state and a channel that is closed at its
// next change.
func (m *Manager) State() (State, <-chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.state, m.changed
}

// update changes the state with f and wakes State's watchers if it changed.
func (m *Manager) update(f func(*State)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	old := m.state
	f(&m.state)
	if m.state != old {
		close(m.changed)
		m.changed = make(chan struct{})
	}
}

// sessionUp is each Session's connected hook.
func (m *Manager) sessionUp(up bool) {
	m.update(func(s *State) {
		if up {
			s.Connected++
			s.EverConnected = true
		} else {
			s.Connected--
		}
	})
}

// Ping asks Run's event loop to answer and waits for it, or for ctx. A
// watchdog calls it to prove that the loop is not wedged: it fails with
// ctx's error when the loop does not answer in time (also when Run is not
// running).
func (m *Manager) Ping(ctx context.Context) error {
	reply := make(chan struct{})
	select {
	case m.ping <- reply:
	case <-ctx.Done():
		return fmt.Errorf("pinging the card manager: %w", ctx.Err())
	}
	select {
	case <-reply:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("pinging the card manager: %w", ctx.Err())
	}
}

// Why a worker is stopped: the cause of its context, which the Session
// gives as the reason when it closes its WebSocket.
var (
	errCardRemoved   = errors.New("card removed")
	errCardReplaced  = errors.New("card removed and another inserted")
	errBackendFailed = errors.New("card backend stopped")
)

// worker is the goroutine that serves one slot.
type worker struct {
	cancel context.CancelCauseFunc
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
	if err := CheckServerURL(m.cfg.Server); err != nil {
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
	stop := func(id SlotID, why error) {
		if w, ok := workers[id]; ok {
			w.cancel(why)
			delete(workers, id)
		}
	}
	defer m.update(func(s *State) { s.Cards = 0 })
	var errs []error
	for running := len(m.backends); running > 0; m.update(func(s *State) { s.Cards = len(workers) }) {
		select {
		case reply := <-m.ping:
			close(reply)
		case ev := <-events:
			if !ev.Present {
				if _, ok := workers[ev.Slot]; ok {
					m.log.Info("card removed", "slot", ev.Slot.String())
				}
				stop(ev.Slot, errCardRemoved)
				continue
			}
			if ev.Open == nil {
				m.log.Error("backend reported a card without a way to open it", "slot", ev.Slot.String())
				continue
			}
			prev := workers[ev.Slot]
			stop(ev.Slot, errCardReplaced)
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
					stop(id, errBackendFailed)
				}
			}
		}
	}
	for id := range workers {
		stop(id, context.Canceled)
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
	wctx, cancel := context.WithCancelCause(ctx)
	w := &worker{cancel: cancel, done: make(chan struct{})}
	wg.Go(func() {
		defer close(w.done)
		defer cancel(context.Canceled)
		if prev != nil {
			<-prev.done
		}
		m.serveSlot(wctx, ev)
	})
	return w
}

// serveSlot serves the card of ev until ctx is done: it opens the card and
// runs its Session, and does both again after a backoff whenever Open fails
// or the session ends by itself.
func (m *Manager) serveSlot(ctx context.Context, ev SlotEvent) {
	log := m.log.With("slot", ev.Slot.String())
	failures := 0
	for {
		up, err := m.serveOnce(ctx, ev, log)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, ErrBadServerURL) {
			log.Error("giving up on the card", "err", err)
			return
		}
		if up >= m.timing.StableAfter {
			failures = 0
		}
		delay := m.timing.backoff(failures, m.jitter)
		failures++
		log.Warn("card session ended; opening the card again unless it is removed", "err", err, "retry_in", delay.Round(time.Millisecond))
		if !sleep(ctx.Done(), delay) {
			return
		}
	}
}

// serveOnce opens the card of ev and runs one Session for it until ctx is
// done or the session ends. It returns how long the session ran and why it
// ended (nil when ctx ended it).
func (m *Manager) serveOnce(ctx context.Context, ev SlotEvent, log *slog.Logger) (time.Duration, error) {
	octx, ocancel := context.WithTimeout(ctx, OpenTimeout)
	c, err := ev.Open(octx)
	ocancel()
	if err != nil {
		return 0, fmt.Errorf("opening card: %w", err)
	}
	defer func() {
		if err := c.Close(); err != nil && !errors.Is(err, card.ErrRemoved) {
			log.Warn("closing card", "err", err)
		}
	}()
	start := time.Now()
	s := NewSession(m.cfg, c, ev.Slot.ReaderName())
	s.connected = m.sessionUp
	err = s.Run(ctx)
	return time.Since(start), err
}
