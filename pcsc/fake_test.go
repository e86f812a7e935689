package pcsc

import (
	"bytes"
	"slices"
	"sync"
	"time"
)

// fakeSys is an in-process model of pcscd behind the seam: readers with
// cards, pcsc-lite's event counters and PnP reader count, blocking
// GetStatusChange with Cancel, exclusive access, and pcscd going down.
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
	// held is the share mode of the handle connected to the card, 0 if
	// none.
	held shareMode
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
	// atrs, if set, gives the ATR after each reset, in turn.
	atrs [][]byte
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
	s.liveCards++
	s.notify()
	p := T1
	if protocols == T0 {
		p = T0
	}
	return &fakeCard{sys: s, name: reader, counter: r.counter, proto: p}, nil
}

type fakeCard struct {
	sys          *fakeSys
	name         string
	counter      uint32 // the card's insertion this handle belongs to
	proto        Protocol
	disconnected bool
}

// state returns the reader if the handle is still good, or the error
// pcsc-lite would give; mu must be held.
func (h *fakeCard) state() (*fakeReader, error) {
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
	if err := r.failNext; err != nil {
		r.failNext = nil
		return nil, err
	}
	return r, nil
}

func (h *fakeCard) Transmit(cmd []byte) ([]byte, error) {
	h.sys.mu.Lock()
	r, err := h.state()
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
	r, err := h.state()
	if err != nil {
		return err
	}
	r.dispositions = append(r.dispositions, d)
	r.shares = append(r.shares, share)
	if len(r.atrs) > 0 {
		r.atr, r.atrs = r.atrs[0], r.atrs[1:]
	}
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
	return cardStatus{Reader: h.name, State: statusPresent, Protocol: h.proto, ATR: bytes.Clone(r.atr)}, nil
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
		if r.counter == h.counter {
			r.held = 0
		}
	}
	if h.sys.down {
		return CodeNoService
	}
	return nil
}

func (h *fakeCard) ActiveProtocol() Protocol { return h.proto }
