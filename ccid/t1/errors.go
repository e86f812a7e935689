package t1

import (
	"errors"
	"fmt"
)

// Errors returned by Conn, for errors.Is.
var (
	// ErrProtocol: the card broke the block protocol and retransmission did
	// not repair it. The connection has been resynchronised (or will be on
	// the next call); the command may or may not have been executed.
	ErrProtocol = errors.New("t1 protocol error")
	// ErrAborted: the card aborted the chain with S(ABORT request).
	ErrAborted = errors.New("t1 chain aborted by the card")
	// ErrResyncFailed: the card did not answer S(RESYNCH request). The card
	// needs a reset; the next call tries to resynchronise again first.
	ErrResyncFailed = errors.New("t1 resynchronisation failed")
	// ErrInvalidArgument: the caller passed an empty or oversized APDU or
	// an IFSD outside 1..254.
	ErrInvalidArgument = errors.New("t1 invalid argument")
)

// Errors an Exchanger returns (wrapped) for a block the reader could not
// deliver. Both are repaired by the protocol's retransmission rules; every
// other Exchanger error ends the call.
var (
	// ErrNoBlock: the card sent no block within the block waiting time (the
	// reader reports the card mute or a timeout). A ccid Exchanger that
	// reports card.ErrMute wraps both.
	ErrNoBlock = errors.New("no block from the card")
	// ErrParity: the reader saw a parity error in the card's block.
	ErrParity = errors.New("parity error in the card's block")
)

// BlockError describes one block that could not be accepted: a bad EDC,
// length or PCB, a sequence number out of turn, a block the protocol did
// not allow at that point, or a block that never arrived. It matches
// ErrProtocol with errors.Is, and Err (ErrNoBlock, ErrParity) if set.
type BlockError struct {
	// Reason says what was wrong.
	Reason string
	// EDC is true for transmission errors (EDC or parity), which are
	// answered with an R-block "EDC error"; all others get "other error".
	EDC bool
	// Err is the Exchanger's error when no block arrived, else nil.
	Err error
}

func blockErrorf(edc bool, format string, args ...any) *BlockError {
	return &BlockError{Reason: fmt.Sprintf(format, args...), EDC: edc}
}

func (e *BlockError) Error() string {
	if e.Err != nil {
		return e.Reason + ": " + e.Err.Error()
	}
	return "invalid block: " + e.Reason
}

// Is reports whether target is ErrProtocol.
func (e *BlockError) Is(target error) bool { return target == ErrProtocol }

// Unwrap returns Err.
func (e *BlockError) Unwrap() error { return e.Err }

// rBits is the error code of the R-block that answers e.
func (e *BlockError) rBits() byte {
	if e.EDC {
		return rEDCError
	}
	return rOther
}
