package ccid

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/wsrc-go/wsrc/ccid/internal/usbio"
)

// pollInterval is how often slots are polled with GetSlotStatus when the
// reader has no interrupt endpoint (pcscd's PCSCLITE_STATUS_POLL_RATE).
const pollInterval = 400 * time.Millisecond

// interruptErrors is how many interrupt-in errors in a row make the
// monitor give up on the endpoint and poll instead.
const interruptErrors = 3

// slotEvent is a presence change the monitor reports.
type slotEvent struct {
	s       *slot
	present bool
	gen     uint64 // the card's generation, for present events
}

// monitor tracks card presence for the slots of one link and reports
// every change, in order, through emit. It listens to
// RDR_to_PC_NotifySlotChange on the interrupt endpoint and falls back
// to polling with GetSlotStatus when there is none (or it fails).
//
// Ownership: run's goroutine is the only writer of the slots' present
// flags and generation bumps; it owns the poll ticker and the
// interrupt reader goroutine, and waits for the latter before it
// returns.
type monitor struct {
	l      *link
	slots  []*slot // indexed by bSlot
	hasInt bool
	intLen int
	poll   time.Duration
	emit   func(ctx context.Context, ev slotEvent)
	log    *slog.Logger
	pokeCh chan struct{} // capacity 1: check presence soon
	ready  chan struct{} // closed after the first presence check
}

func newMonitor(l *link, slots []*slot, ci ccidInterface, poll time.Duration, emit func(context.Context, slotEvent), log *slog.Logger) *monitor {
	m := &monitor{l: l, slots: slots, hasInt: ci.Endpoints.IntIn != 0, intLen: ci.IntMaxPacket,
		poll: poll, emit: emit, log: log, pokeCh: make(chan struct{}, 1), ready: make(chan struct{})}
	if m.intLen < 2+len(slots)/4 {
		m.intLen = 64
	}
	for _, s := range slots {
		s.poke = m.poke
	}
	return m
}

// poke asks run to check every slot now; it never blocks.
func (m *monitor) poke() {
	select {
	case m.pokeCh <- struct{}{}:
	default:
	}
}

// run watches until ctx is done or the link stops.
func (m *monitor) run(ctx context.Context) {
	m.checkAll(ctx)
	close(m.ready)
	var notes chan Notification
	intDone := make(chan struct{})
	if m.hasInt {
		notes = make(chan Notification, 8)
		go m.readInterrupt(ctx, notes, intDone)
	} else {
		close(intDone)
	}
	defer func() { <-intDone }()
	var ticker *time.Ticker
	var tick <-chan time.Time
	startPolling := func() {
		ticker = time.NewTicker(m.poll)
		tick = ticker.C
	}
	defer func() {
		if ticker != nil {
			ticker.Stop()
		}
	}()
	if notes == nil {
		startPolling()
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.l.done:
			return
		case n, ok := <-notes:
			if !ok {
				notes = nil
				m.log.Info("ccid: interrupt endpoint failed, polling slot status instead", "reader", m.l.name)
				startPolling()
				continue
			}
			m.handle(ctx, n)
		case <-tick:
			m.checkAll(ctx)
		case <-m.pokeCh:
			m.checkAll(ctx)
		}
	}
}

// readInterrupt reads the interrupt endpoint and passes notifications
// on; it closes notes when it gives up, and done when it returns.
func (m *monitor) readInterrupt(ctx context.Context, notes chan<- Notification, done chan<- struct{}) {
	defer close(done)
	buf := make([]byte, m.intLen)
	fails := 0
	for {
		n, err := m.l.conn.InterruptIn(ctx, buf)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			if errors.Is(err, usbio.ErrNoDevice) {
				return
			}
			if errors.Is(err, usbio.ErrTimeout) {
				continue
			}
			if fails++; fails >= interruptErrors {
				m.log.Warn("ccid: interrupt-in keeps failing", "reader", m.l.name, "err", err)
				close(notes)
				return
			}
			continue
		}
		fails = 0
		note, perr := ParseNotification(buf[:n], len(m.slots))
		if perr != nil {
			m.log.Debug("ccid: ignoring interrupt message", "reader", m.l.name, "err", perr)
			continue
		}
		select {
		case notes <- note:
		case <-ctx.Done():
			return
		}
	}
}

// handle applies one interrupt notification.
func (m *monitor) handle(ctx context.Context, n Notification) {
	switch n.Type {
	case RDRToPCHardwareError:
		m.log.Warn("ccid: reader reports a hardware error", "reader", m.l.name, "slot", int(n.Slot),
			"seq", int(n.Seq), "code", int(n.Code))
		if int(n.Slot) < len(m.slots) {
			m.check(ctx, m.slots[n.Slot])
		}
	case RDRToPCNotifySlotChange:
		for _, c := range n.Slots {
			s := m.slots[c.Slot]
			switch {
			case !c.Present && s.present.Load():
				m.removed(ctx, s)
			case c.Present && !s.present.Load():
				m.inserted(ctx, s)
			case c.Present && c.Changed:
				// Present before and after: a swap, or a spurious change
				// bit (QEMU sends 50 03 at start). Ask the reader.
				m.check(ctx, s)
			}
		}
	}
}

// checkAll polls every slot that is not busy.
func (m *monitor) checkAll(ctx context.Context) {
	for _, s := range m.slots {
		m.check(ctx, s)
	}
}

// check polls one slot with GetSlotStatus. When a command is running on
// it, the check is put off until the slot is unlocked.
func (m *monitor) check(ctx context.Context, s *slot) {
	if !s.tryLock() {
		s.recheck.Store(true)
		return
	}
	st, err := s.status(ctx)
	s.unlock()
	if err != nil {
		m.log.Debug("ccid: slot status", "slot", s.name, "err", err)
		return
	}
	switch {
	case st == ICCAbsent:
		if s.present.Load() {
			m.removed(ctx, s)
		}
	case !s.present.Load():
		m.inserted(ctx, s)
	case st == ICCInactive && s.active.Load():
		// A card in use that now reads "present, inactive" was swapped
		// between polls, or deactivated by the reader: report it anew.
		m.removed(ctx, s)
		m.inserted(ctx, s)
	}
}

func (m *monitor) removed(ctx context.Context, s *slot) {
	s.gen.Add(1)
	s.active.Store(false)
	s.present.Store(false)
	m.emit(ctx, slotEvent{s: s})
}

func (m *monitor) inserted(ctx context.Context, s *slot) {
	s.present.Store(true)
	m.emit(ctx, slotEvent{s: s, present: true, gen: s.gen.Load()})
}
