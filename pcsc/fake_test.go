package pcsc

import (
	"bytes"
	"slices"
	"sync"
	"time"
)

// fakeSys is an in-process model of pcscd behind the seam: readers with
// cards, pcsc-lite's event counters and PnP reader count, blocking
// GetStatusChange with Cancel, exclusive access, resets by other handles,
// and pcscd going down.
type fakeSys struct {
	mu      sync.Mutex
	down    bool // pcscd not running: everything fails with NO_SERVICE
	readers map[string]*fakeReader
	order   []string
	changed chan struct{} // closed and replaced on every change
	// dropCancel models SCardCancel arriving when no call is waiting
	// (pcsc-lite then forgets it): every Cancel is lost. dropCancels
	// loses only that many of them, the first ones.
	dropCancel  bool
	dropCancels int
	// unknownReaderErr makes GetStatusChange fail with
	// SCARD_E_UNKNOWN_READER for a vanished reader instead of flagging
	// it SCARD_STATE_UNKNOWN.
	unknownReaderErr bool

	establishes int // EstablishContext calls, including failed ones
	liveCtx     int // contexts established and not released
	liveCards   int // handles connected and not disconnected
	cancels     int // Cancel calls
	statusWaits int // GetStatusChange calls
}

type fakeReader struct {
	present bool
	mute    bool
	counter uint32
	atr     []byte
	// held is the share mode of the handles connected to the card, 0 if
	// none.
	held shareMode
	// handles are the handles connected and not disconnected.
	handles []*fakeCard
	// transmit answers commands; nil echoes 90 00.
	transmit func(cmd []byte) ([]byte, error)
	// failNext makes the next Reconnect/Status/Transmit fail with it.
	failNext error
	// failStatus makes every Status fail with it.
	failStatus error
	// log records dispositions and share modes seen.
	dispositions []disposition
	shares       []shareMode
	protocols    []Protocol
	// atrs, if set, gives the ATR after each reset or power-up, in turn.
	atrs [][]byte
	// unpowered: a Disconnect with SCARD_UNPOWER_CARD powered the card
	// down; a Connect, or a Reconnect that resets, powers it up. While it
	// is down Status reports it present but not powered, and Transmit
	// fails as a real reader does (vpcd answers APDUs regardless).
	unpowered bool
	// ppsFailsUnpowered makes a Reconnect with SCARD_LEAVE_CARD to an
	// unpowered card fail with SCARD_W_UNRESPONSIVE_CARD, as pcsc-lite's
	// protocol negotiation with a reader that needs the card powered
	// would.
	ppsFailsUnpowered bool
}

func newFakeSys() *fakeSys {
	return &fakeSys{readers: map[string]*fakeReader{}, changed: make(chan struct{})}
}

// notify wakes waiting GetStatusChange calls; mu must be held.
func (s *fakeSys) notify() {
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *fakeSys) addReader(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.readers[name] = &fakeReader{}
	s.order = append(s.order, name)
	s.notify()
}

func (s *fakeSys) removeReader(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.readers, name)
	s.order = slices.DeleteFunc(s.order, func(r string) bool { return r == name })
	s.notify()
}

func (s *fakeSys) insert(name string, atr []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.readers[name]
	r.present, r.atr, r.mute = true, bytes.Clone(atr), atr == nil
	r.counter++
	s.notify()
}

func (s *fakeSys) remove(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.readers[name]
	r.present, r.atr, r.held = false, nil, 0
	r.counter++
	s.notify()
}

// swap replaces the card in one step, as if removal and insertion both
// happened between two looks.
func (s *fakeSys) swap(name string, atr []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.readers[name]
	r.atr = bytes.Clone(atr)
	r.counter += 2
	s.notify()
}

func (s *fakeSys) setDown(down bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.down = down
	s.notify()
}

func (s *fakeSys) reader(name string) *fakeReader {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.readers[name]
}

func (s *fakeSys) counts() (establishes, liveCtx, liveCards, cancels int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.establishes, s.liveCtx, s.liveCards, s.cancels
}

func (s *fakeSys) EstablishContext() (scardContext, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.establishes++
	if s.down {
		return nil, CodeNoService
	}
	s.liveCtx++
	return &fakeCtx{sys: s, gen: s.changed}, nil
}

type fakeCtx struct {
	sys      *fakeSys
	gen      chan struct{} // identifies the pcscd "instance" (unused)
	released bool
	waiting  chan struct{} // non-nil while GetStatusChange waits; Cancel closes it
}

func (c *fakeCtx) check() error {
	if c.released {
		return CodeInvalidHandle
	}
	if c.sys.down {
		return CodeNoService
	}
	return nil
}

func (c *fakeCtx) ListReaders() ([]string, error) {
	c.sys.mu.Lock()
	defer c.sys.mu.Unlock()
	if err := c.check(); err != nil {
		return nil, err
	}
	if len(c.sys.order) == 0 {
		return nil, CodeNoReadersAvailable
	}
	return slices.Clone(c.sys.order), nil
}

func (c *fakeCtx) GetStatusChange(states []readerState, timeout time.Duration) error {
	c.sys.mu.Lock()
	c.sys.statusWaits++
	c.sys.mu.Unlock()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		s := c.sys
		s.mu.Lock()
		if err := c.check(); err != nil {
			s.mu.Unlock()
			return err
		}
		changed := false
		for i := range states {
			st := &states[i]
			var ev stateFlag
			st.ATR = nil
			if st.Reader == pnpReader {
				ev = stateFlag(len(s.order)) << 16
			} else if r := s.readers[st.Reader]; r == nil {
				if s.unknownReaderErr {
					s.mu.Unlock()
					return CodeUnknownReader
				}
				ev = stateUnknown
			} else {
				ev = stateFlag(r.counter) << 16
				if r.present {
					ev |= statePresent
					st.ATR = bytes.Clone(r.atr)
					if r.mute {
						ev |= stateMute
					}
					switch r.held {
					case shareExclusive:
						ev |= stateExclusive | stateInUse
					case shareShared:
						ev |= stateInUse
					}
				} else {
					ev |= stateEmpty
				}
			}
			if ev != st.Current&^stateChanged {
				ev |= stateChanged
				changed = true
			}
			st.Event = ev
		}
		if changed {
			s.mu.Unlock()
			return nil
		}
		wake := s.changed
		cancel := make(chan struct{})
		c.waiting = cancel
		s.mu.Unlock()
		select {
		case <-wake:
		case <-cancel:
			return CodeCancelled
		case <-timer.C:
			return CodeTimeout
		}
		s.mu.Lock()
		c.waiting = nil
		s.mu.Unlock()
	}
}

func (c *fakeCtx) Cancel() error {
	c.sys.mu.Lock()
	defer c.sys.mu.Unlock()
	c.sys.cancels++
	if c.released {
		return CodeInvalidHandle
	}
	if c.sys.dropCancels > 0 {
		c.sys.dropCancels--
		return nil
	}
	if c.waiting != nil && !c.sys.dropCancel {
		close(c.waiting)
		c.waiting = nil
	}
	return nil
}

func (c *fakeCtx) Release() error {
	c.sys.mu.Lock()
	defer c.sys.mu.Unlock()
	if c.released {
		return CodeInvalidHandle
	}
	c.released = true
	c.sys.liveCtx--
	return nil
}

func (c *fakeCtx) Connect(reader string, share shareMode, protocols Protocol) (scardCard, error) {
	s := c.sys
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := c.check(); err != nil {
		return nil, err
	}
	r := s.readers[reader]
	if r == nil {
		return nil, CodeUnknownReader
	}
	r.shares = append(r.shares, share)
	r.protocols = append(r.protocols, protocols)
	if !r.present {
		return nil, CodeNoSmartcard
	}
	if r.mute {
		return nil, CodeUnresponsiveCard
	}
	if r.held == shareExclusive || (r.held != 0 && share == shareExclusive) {
		return nil, CodeSharingViolation
	}
	r.held = share
	if r.unpowered {
		r.powerUp()
	}
	s.liveCards++
	s.notify()
	p := T1
	if protocols == T0 {
		p = T0
	}
	h := &fakeCard{sys: s, name: reader, counter: r.counter, proto: p}
	r.handles = append(r.handles, h)
	return h, nil
}

type fakeCard struct {
	sys          *fakeSys
	name         string
	counter      uint32 // the card's insertion this handle belongs to
	proto        Protocol
	disconnected bool
	// resetPending is pcsc-lite's per-handle SCARD_RESET event: another
	// handle reset the card, and every call but SCardReconnect and
	// SCardDisconnect fails with SCARD_W_RESET_CARD until this handle's
	// SCardReconnect (any disposition) acknowledges it. A removal
	// overrides it (SCARD_W_REMOVED_CARD). As pcsc-lite 1.9.9 does
	// (TestRealForeignReset).
	resetPending bool
}

// powerUp powers the card up (again), with the next ATR of atrs; mu must
// be held.
func (r *fakeReader) powerUp() {
	r.unpowered = false
	if len(r.atrs) > 0 {
		r.atr, r.atrs = r.atrs[0], r.atrs[1:]
	}
}

// resetBy does to the card what SCardReconnect (or, with disconnect,
// SCardDisconnect) with d does in pcsc-lite 1.9.9: SCARD_RESET_CARD resets
// it, SCARD_UNPOWER_CARD powers it down and, on Reconnect only, up again;
// every other handle to the card gets a reset pending. mu must be held.
func (h *fakeCard) resetBy(r *fakeReader, d disposition, disconnect bool) {
	if d != resetCard && d != unpowerCard {
		return
	}
	if d == unpowerCard && disconnect {
		r.unpowered = true
	} else {
		r.powerUp()
	}
	for _, o := range r.handles {
		if o != h && o.counter == r.counter {
			o.resetPending = true
		}
	}
}

// state returns the reader if the handle is still good, or the error
// pcsc-lite would give; mu must be held.
func (h *fakeCard) state() (*fakeReader, error) {
	r, err := h.alive()
	if err != nil {
		return nil, err
	}
	if h.resetPending {
		return nil, CodeResetCard
	}
	if err := r.failNext; err != nil {
		r.failNext = nil
		return nil, err
	}
	return r, nil
}

// alive is state without the reset event and failNext; mu must be held.
func (h *fakeCard) alive() (*fakeReader, error) {
	if h.disconnected {
		return nil, CodeInvalidHandle
	}
	if h.sys.down {
		return nil, CodeNoService
	}
	r := h.sys.readers[h.name]
	if r == nil {
		return nil, CodeReaderUnavailable
	}
	if r.counter != h.counter || !r.present {
		return nil, CodeRemovedCard
	}
	return r, nil
}

func (h *fakeCard) Transmit(cmd []byte) ([]byte, error) {
	h.sys.mu.Lock()
	r, err := h.state()
	if err == nil && r.unpowered {
		err = CodeNotTransacted
	}
	h.sys.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if r.transmit == nil {
		return []byte{0x90, 0x00}, nil
	}
	return r.transmit(cmd)
}

func (h *fakeCard) Reconnect(share shareMode, protocols Protocol, d disposition) error {
	h.sys.mu.Lock()
	defer h.sys.mu.Unlock()
	if r := h.sys.readers[h.name]; r != nil && !r.present && !h.disconnected && !h.sys.down {
		return CodeNoSmartcard // pcsc-lite 1.9.9 on a card pcscd saw go
	}
	r, err := h.alive()
	if err != nil {
		return err
	}
	if d == leaveCard && r.unpowered && r.ppsFailsUnpowered {
		return CodeUnresponsiveCard
	}
	if err := r.failNext; err != nil {
		r.failNext = nil
		return err
	}
	h.resetPending = false
	h.resetBy(r, d, false)
	r.dispositions = append(r.dispositions, d)
	r.shares = append(r.shares, share)
	return nil
}

func (h *fakeCard) Status() (cardStatus, error) {
	h.sys.mu.Lock()
	defer h.sys.mu.Unlock()
	if r := h.sys.readers[h.name]; r != nil && r.failStatus != nil && !h.disconnected {
		return cardStatus{}, r.failStatus
	}
	r, err := h.state()
	if err != nil {
		return cardStatus{}, err
	}
	state := statusPresent
	if !r.unpowered {
		state |= statusPowered | statusNegotiable
	}
	return cardStatus{Reader: h.name, State: state, Protocol: h.proto, ATR: bytes.Clone(r.atr)}, nil
}

func (h *fakeCard) Disconnect(d disposition) error {
	h.sys.mu.Lock()
	defer h.sys.mu.Unlock()
	if h.disconnected {
		return CodeInvalidHandle
	}
	h.disconnected = true
	h.sys.liveCards--
	if r := h.sys.readers[h.name]; r != nil {
		r.dispositions = append(r.dispositions, d)
		r.handles = slices.DeleteFunc(r.handles, func(o *fakeCard) bool { return o == h })
		if r.counter == h.counter && r.present && !h.sys.down {
			h.resetBy(r, d, true)
		}
		if !slices.ContainsFunc(r.handles, func(o *fakeCard) bool { return o.counter == r.counter }) {
			r.held = 0
		}
	}
	if h.sys.down {
		return CodeNoService
	}
	return nil
}

func (h *fakeCard) ActiveProtocol() Protocol { return h.proto }
