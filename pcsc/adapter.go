package pcsc

import (
	"errors"
	"sync"
	"time"

	"github.com/ebfe/scard"
)

// scardSystem is the seam's real side: a thin layer over ebfe/scard. It is
// the only code in this package that the fake-based tests do not reach;
// the real-stack tests (pcscd + vpcd) cover it.
type scardSystem struct{}

// realSystem is what the exported functions use.
var realSystem system = scardSystem{}

// statusChangeMu serialises ebfe/scard's GetStatusChange across the whole
// process: it records each reader name's C string in a package-level map
// without a lock, so two concurrent calls would corrupt the map (or let a
// buffer still used by C be collected). Holding it across the blocking call
// is why Watch calls GetStatusChange with a bounded timeout
// (WatchOptions.PollTimeout): Snapshot, Readers or a second watcher in the
// same process wait at most that long for their turn. Card never calls
// GetStatusChange (see Card.cardGone), so an open card's removal check
// never waits for the lock.
var statusChangeMu sync.Mutex

func (scardSystem) EstablishContext() (scardContext, error) {
	c, err := scard.EstablishContext()
	if err != nil {
		return nil, codeOf(err)
	}
	return &scardCtx{c: c}, nil
}

type scardCtx struct {
	c *scard.Context
}

func (s *scardCtx) ListReaders() ([]string, error) {
	r, err := s.c.ListReaders()
	return r, codeOf(err)
}

func (s *scardCtx) GetStatusChange(states []readerState, timeout time.Duration) error {
	rs := make([]scard.ReaderState, len(states))
	for i, st := range states {
		rs[i] = scard.ReaderState{Reader: st.Reader, CurrentState: scard.StateFlag(st.Current)}
		if len(st.ATR) <= 33 { // ebfe copies into a [33]byte
			rs[i].Atr = st.ATR
		}
	}
	statusChangeMu.Lock()
	err := s.c.GetStatusChange(rs, timeout)
	statusChangeMu.Unlock()
	if err != nil {
		return codeOf(err)
	}
	for i := range states {
		states[i].Event = stateFlag(rs[i].EventState)
		states[i].ATR = rs[i].Atr
	}
	return nil
}

func (s *scardCtx) Cancel() error  { return codeOf(s.c.Cancel()) }
func (s *scardCtx) Release() error { return codeOf(s.c.Release()) }

func (s *scardCtx) Connect(reader string, share shareMode, protocols Protocol) (scardCard, error) {
	h, err := s.c.Connect(reader, scard.ShareMode(share), scard.Protocol(protocols))
	if err != nil {
		return nil, codeOf(err)
	}
	return &scardHandle{h: h}, nil
}

type scardHandle struct {
	h *scard.Card
}

func (s *scardHandle) Transmit(cmd []byte) ([]byte, error) {
	// ebfe/scard indexes cmd[0] and panics on a protocol other than T=0
	// or T=1; Card.Transmit rejects short commands, this guards the rest.
	if len(cmd) == 0 {
		return nil, CodeInvalidParameter
	}
	if p := s.ActiveProtocol(); p != T0 && p != T1 {
		return nil, CodeProtoMismatch
	}
	rsp, err := s.h.Transmit(cmd)
	return rsp, codeOf(err)
}

func (s *scardHandle) Reconnect(share shareMode, protocols Protocol, d disposition) error {
	return codeOf(s.h.Reconnect(scard.ShareMode(share), scard.Protocol(protocols), scard.Disposition(d)))
}

func (s *scardHandle) Status() (cardStatus, error) {
	st, err := s.h.Status()
	if err != nil {
		return cardStatus{}, codeOf(err)
	}
	return cardStatus{Reader: st.Reader, State: uint32(st.State), Protocol: Protocol(st.ActiveProtocol), ATR: st.Atr}, nil
}

func (s *scardHandle) Disconnect(d disposition) error {
	return codeOf(s.h.Disconnect(scard.Disposition(d)))
}

func (s *scardHandle) ActiveProtocol() Protocol { return Protocol(s.h.ActiveProtocol()) }

// codeOf turns ebfe/scard's error type into this package's Code; other
// errors pass unchanged.
func codeOf(err error) error {
	var e scard.Error
	if errors.As(err, &e) {
		return Code(e)
	}
	return err
}
