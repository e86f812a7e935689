package pcsc

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"slices"
	"time"
)

// ReaderEvent reports a change in one reader: a card inserted or removed,
// or the reader itself appearing (first event for its name) or going away
// (Gone).
type ReaderEvent struct {
	// Reader is the PC/SC reader name, the key for Open.
	Reader string
	// CardPresent is true while a card is in the reader.
	CardPresent bool
	// ATR is the card's answer-to-reset when CardPresent and not Mute.
	ATR []byte
	// Mute is true when a card is present but did not answer to reset.
	Mute bool
	// Gone is true when the reader disappeared (unplugged, or pcscd
	// stopped); a later event for the same name means it came back.
	Gone bool
}

// WatchOptions configure Watch.
type WatchOptions struct {
	// Filter selects the readers to watch; the zero Filter selects all.
	Filter Filter
	// Logger receives pcscd outages and recoveries; nil means
	// slog.Default().
	Logger *slog.Logger
	// MinBackoff and MaxBackoff bound the wait between attempts to reach
	// pcscd after it went away (doubling, with jitter); zero means 250ms
	// and 10s.
	MinBackoff, MaxBackoff time.Duration
	// PollTimeout bounds each SCardGetStatusChange; zero means
	// DefaultPollTimeout. Events arrive without waiting for it: it only
	// bounds how long Snapshot, Readers or another Watch in the same
	// process wait for their turn (ebfe/scard's GetStatusChange is
	// serialised process-wide). Open cards never wait for it.
	PollTimeout time.Duration
}

// DefaultPollTimeout is WatchOptions.PollTimeout's default.
const DefaultPollTimeout = 2 * time.Second

// cancelRetry is how often the watcher repeats SCardCancel until its
// session has ended: pcsc-lite forgets a Cancel that arrives while no
// SCardGetStatusChange is waiting (ctx done just before the call
// started), so one Cancel alone could leave Watch blocked for a whole
// PollTimeout. A variable so tests can change it.
var cancelRetry = 100 * time.Millisecond

// Watch reports reader and card changes to fn until ctx is done.
//
// fn is called from Watch's own goroutine, one event at a time, first with
// the current state of every selected reader, then with each change: card
// inserted (CardPresent with ATR), card removed, card swapped between two
// looks (removed, then present), reader gone, reader appeared. fn should
// return quickly; it may call Open.
//
// Watch survives pcscd: when pcscd stops (or is not running yet) every
// known reader is reported Gone, and Watch re-establishes its PC/SC
// context with backoff (WatchOptions.MinBackoff..MaxBackoff), reporting
// the readers afresh when pcscd is back. New readers are noticed through
// the \\?PnP?\Notification pseudo-reader.
//
// When ctx is done, Watch interrupts its blocking SCardGetStatusChange with
// SCardCancel (from a goroutine that exits before Watch returns), reports
// every known reader Gone, and returns nil. It returns an error only for
// invalid options.
func Watch(ctx context.Context, opts WatchOptions, fn func(ReaderEvent)) error {
	w, err := newWatcher(realSystem, opts, fn)
	if err != nil {
		return err
	}
	w.run(ctx)
	return nil
}

type watcher struct {
	sys  system
	m    *matcher
	fn   func(ReaderEvent)
	log  *slog.Logger
	minB time.Duration
	maxB time.Duration
	poll time.Duration // PollTimeout

	// owned by run's goroutine
	known map[string]*slot
}

// slot is what the watcher knows and last reported about one reader.
type slot struct {
	current  stateFlag // passed back as dwCurrentState
	reported bool
	present  bool
	mute     bool
	counter  stateFlag
	atr      []byte
}

func newWatcher(sys system, opts WatchOptions, fn func(ReaderEvent)) (*watcher, error) {
	m, err := opts.Filter.compile()
	if err != nil {
		return nil, err
	}
	if fn == nil {
		return nil, errors.New("pcsc watch: nil event function")
	}
	w := &watcher{sys: sys, m: m, fn: fn, log: opts.Logger, minB: opts.MinBackoff, maxB: opts.MaxBackoff,
		poll: opts.PollTimeout, known: map[string]*slot{}}
	if w.poll <= 0 {
		w.poll = DefaultPollTimeout
	}
	if w.log == nil {
		w.log = slog.Default()
	}
	if w.minB <= 0 {
		w.minB = 250 * time.Millisecond
	}
	if w.maxB <= 0 {
		w.maxB = 10 * time.Second
	}
	if w.maxB < w.minB {
		w.maxB = w.minB
	}
	return w, nil
}

// run keeps a session with pcscd going until ctx is done.
func (w *watcher) run(ctx context.Context) {
	defer w.goneAll()
	backoff := w.minB
	warned := false // the outage was logged at Warn level
	for {
		healthy, err := w.session(ctx)
		w.goneAll()
		if ctx.Err() != nil {
			return
		}
		if healthy {
			backoff = w.minB
			warned = false
		}
		if !warned {
			w.log.Warn("pcsc: pcscd unreachable, reconnecting", "err", err)
			warned = true
		} else {
			w.log.Debug("pcsc: pcscd still unreachable", "err", err, "retry_in", backoff)
		}
		// Jitter in [backoff/2, backoff).
		d := backoff/2 + rand.N(backoff/2+1)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, w.maxB)
	}
}

// session establishes a context and watches over it until an error that the
// context cannot survive, or ctx is done. healthy reports whether the
// session got as far as listing readers (so the backoff restarts).
func (w *watcher) session(ctx context.Context) (healthy bool, err error) {
	sctx, err := w.sys.EstablishContext()
	if err != nil {
		return false, wrapErr("SCardEstablishContext", "", err)
	}
	defer sctx.Release()
	// When ctx is done, a goroutine cancels the blocking wait, again every
	// cancelRetry until the session has returned (a Cancel can be lost, see
	// cancelRetry). The session waits for that goroutine before Release.
	ended := make(chan struct{})     // closed when the session returns
	cancelled := make(chan struct{}) // closed when the Cancel goroutine exits
	stop := context.AfterFunc(ctx, func() {
		defer close(cancelled)
		t := time.NewTicker(cancelRetry)
		defer t.Stop()
		for {
			_ = sctx.Cancel()
			select {
			case <-ended:
				return
			case <-t.C:
			}
		}
	})
	defer func() {
		close(ended)
		if !stop() {
			<-cancelled // the Cancel goroutine has started: wait for its exit
		}
	}()

	if err := w.sync(sctx); err != nil {
		return false, err
	}
	w.log.Info("pcsc: watching readers", "readers", len(w.known))
	pnp := readerState{Reader: pnpReader}
	for {
		if ctx.Err() != nil {
			return true, ctx.Err()
		}
		names := make([]string, 0, len(w.known))
		for r := range w.known {
			names = append(names, r)
		}
		slices.Sort(names)
		states := make([]readerState, 0, 1+len(names))
		states = append(states, readerState{Reader: pnp.Reader, Current: pnp.Current})
		for _, r := range names {
			states = append(states, readerState{Reader: r, Current: w.known[r].current})
		}
		err := sctx.GetStatusChange(states, w.poll)
		switch {
		case err == nil:
		case isCode(err, CodeTimeout), isCode(err, CodeCancelled):
			continue
		case isCode(err, CodeUnknownReader), isCode(err, CodeReaderUnavailable):
			// A reader vanished between listing and waiting.
			if err := w.sync(sctx); err != nil {
				return true, err
			}
			continue
		default:
			return true, wrapErr("SCardGetStatusChange", "", err)
		}
		resync := false
		if ev := states[0].Event; ev&stateChanged != 0 {
			resync = true
			pnp.Current = ev &^ stateChanged
		}
		for _, st := range states[1:] {
			if w.update(st) {
				resync = true
			}
		}
		if resync {
			if err := w.sync(sctx); err != nil {
				return true, err
			}
		}
	}
}

// update digests one reader's new state and reports what changed. It
// returns true when the reader looks gone and the list needs a refresh.
func (w *watcher) update(st readerState) (resync bool) {
	s := w.known[st.Reader]
	if s == nil || st.Event&stateChanged == 0 {
		return false
	}
	ev := st.Event
	s.current = ev &^ stateChanged
	if ev&stateUnknown != 0 {
		return true
	}
	if ev&stateUnavailable != 0 {
		return false // state cannot be read right now; wait for the next change
	}
	present := ev&statePresent != 0
	mute := present && ev&stateMute != 0
	counter := ev & stateCounterMask
	var atr []byte
	if present && !mute {
		atr = bytes.Clone(st.ATR)
	}
	swapped := s.reported && s.present && present && counter != s.counter
	if s.reported && !swapped && present == s.present && mute == s.mute {
		s.counter = counter
		return false
	}
	if swapped {
		w.fn(ReaderEvent{Reader: st.Reader})
	}
	s.reported, s.present, s.mute, s.counter, s.atr = true, present, mute, counter, atr
	w.fn(ReaderEvent{Reader: st.Reader, CardPresent: present, ATR: bytes.Clone(atr), Mute: mute})
	return false
}

// sync refreshes the reader list: readers gone are reported Gone, new ones
// are watched (their first state is reported by the next update).
func (w *watcher) sync(sctx scardContext) error {
	readers, err := readersOf(sctx, w.m)
	if err != nil {
		return err
	}
	var gone []string
	for r := range w.known {
		if !slices.Contains(readers, r) {
			gone = append(gone, r)
		}
	}
	slices.Sort(gone)
	for _, r := range gone {
		w.reportGone(r)
	}
	for _, r := range readers {
		if w.known[r] == nil {
			w.known[r] = &slot{current: stateUnaware}
		}
	}
	return nil
}

func (w *watcher) reportGone(r string) {
	s := w.known[r]
	delete(w.known, r)
	if s.reported {
		w.fn(ReaderEvent{Reader: r, Gone: true})
	}
}

// goneAll reports every known reader Gone (the session ended).
func (w *watcher) goneAll() {
	names := make([]string, 0, len(w.known))
	for r := range w.known {
		names = append(names, r)
	}
	slices.Sort(names)
	for _, r := range names {
		w.reportGone(r)
	}
}
