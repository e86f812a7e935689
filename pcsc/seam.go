package pcsc

import (
	"strconv"
	"time"
)

// The seam between this package's logic and libpcsclite. Everything above
// it (error mapping, reader filtering, the watcher, Card) is tested with
// the in-process fake in fake_test.go; only scardSystem (adapter.go), the
// thin layer over github.com/ebfe/scard, is exercised by the real-stack
// tests alone.
//
// Errors returned through the seam are Code values (or wrap one) whenever
// they come from PC/SC.

// system establishes PC/SC contexts (SCardEstablishContext).
type system interface {
	EstablishContext() (scardContext, error)
}

// scardContext is one SCARDCONTEXT. Cancel may be called from any
// goroutine while GetStatusChange blocks in another; every other method is
// called from one goroutine at a time.
type scardContext interface {
	ListReaders() ([]string, error)
	GetStatusChange(states []readerState, timeout time.Duration) error
	Cancel() error
	Connect(reader string, share shareMode, protocols Protocol) (scardCard, error)
	Release() error
}

// scardCard is one SCARDHANDLE, used from one goroutine at a time.
type scardCard interface {
	Transmit(cmd []byte) ([]byte, error)
	Reconnect(share shareMode, protocols Protocol, d disposition) error
	Status() (cardStatus, error)
	Disconnect(d disposition) error
	// ActiveProtocol is the protocol negotiated by the last Connect or
	// Reconnect.
	ActiveProtocol() Protocol
}

// readerState is SCARD_READERSTATE: Current is what the caller knows, Event
// what pcscd reports; the upper 16 bits of both are pcsc-lite's event
// counter (for the PnP pseudo-reader: the number of readers).
type readerState struct {
	Reader  string
	Current stateFlag
	Event   stateFlag
	ATR     []byte
}

// cardStatus is what SCardStatus reports.
type cardStatus struct {
	Reader   string
	State    uint32
	Protocol Protocol
	ATR      []byte
}

// stateFlag is SCARD_STATE_*.
type stateFlag uint32

const (
	stateUnaware     stateFlag = 0x0000
	stateIgnore      stateFlag = 0x0001
	stateChanged     stateFlag = 0x0002
	stateUnknown     stateFlag = 0x0004
	stateUnavailable stateFlag = 0x0008
	stateEmpty       stateFlag = 0x0010
	statePresent     stateFlag = 0x0020
	stateExclusive   stateFlag = 0x0080
	stateInUse       stateFlag = 0x0100
	stateMute        stateFlag = 0x0200
	stateUnpowered   stateFlag = 0x0400

	// stateCounterMask selects pcsc-lite's per-reader event counter
	// (incremented on every insertion and removal) or, for the PnP
	// pseudo-reader, the reader count.
	stateCounterMask stateFlag = 0xFFFF0000
)

// SCARD_ABSENT, SCARD_PRESENT... as SCardStatus reports them (pcsc-lite
// values, not a bit field on Windows, a bit field here).
const (
	statusAbsent     uint32 = 0x0002
	statusPresent    uint32 = 0x0004
	statusPowered    uint32 = 0x0010
	statusNegotiable uint32 = 0x0020
)

// pnpReader is the pseudo-reader whose state changes when readers appear
// or disappear.
const pnpReader = `\\?PnP?\Notification`

// shareMode is SCARD_SHARE_*.
type shareMode uint32

const (
	shareExclusive shareMode = 1
	shareShared    shareMode = 2
)

// disposition is SCARD_LEAVE_CARD etc.
type disposition uint32

const (
	leaveCard   disposition = 0
	resetCard   disposition = 1
	unpowerCard disposition = 2
)

// Protocol is a set of transmission protocols (SCARD_PROTOCOL_T0/T1).
type Protocol uint32

// The protocols a card can be connected with.
const (
	T0 Protocol = 1
	T1 Protocol = 2
	// AnyProtocol lets pcscd choose (T=0 or T=1), the default.
	AnyProtocol = T0 | T1
)

// String returns "T=0", "T=1", "T=0|T=1" or "none".
func (p Protocol) String() string {
	switch p {
	case T0:
		return "T=0"
	case T1:
		return "T=1"
	case AnyProtocol:
		return "T=0|T=1"
	case 0:
		return "none"
	}
	return "protocol(" + strconv.FormatUint(uint64(p), 10) + ")"
}
