package ccid

import (
	"errors"
	"fmt"

	"github.com/wsrc-go/wsrc/card"
)

// Errors for each bError value a reader can report (CCID rev 1.1 table
// 6.2-2, plus the vendor codes libccid knows). A *SlotError wraps the
// one matching its code.
var (
	ErrCmdAborted            = errors.New("command aborted")
	ErrICCMute               = errors.New("ICC mute")
	ErrParity                = errors.New("parity error")
	ErrOverrun               = errors.New("overrun")
	ErrHardware              = errors.New("hardware error")
	ErrBadATRTS              = errors.New("bad ATR TS")
	ErrBadATRTCK             = errors.New("bad ATR TCK")
	ErrProtocolNotSupported  = errors.New("ICC protocol not supported")
	ErrClassNotSupported     = errors.New("ICC class not supported")
	ErrProcedureByteConflict = errors.New("procedure byte conflict")
	ErrDeactivatedProtocol   = errors.New("deactivated protocol")
	ErrBusyAutoSequence      = errors.New("busy with automatic sequence")
	ErrPINTimeout            = errors.New("PIN timeout")
	ErrPINCancelled          = errors.New("PIN cancelled")
	ErrSlotBusy              = errors.New("slot busy")
	ErrEMVProtocol           = errors.New("EMV protocol error")
	ErrShortCircuit          = errors.New("ICC short circuit")
	ErrCmdNotSupported       = errors.New("command not supported")
	// ErrBadParameter: bError 0x01..0x7F, the offset of a parameter the
	// reader rejects (5 = bSlot, see ErrBadSlot).
	ErrBadParameter = errors.New("bad parameter")
	ErrBadSlot      = errors.New("slot does not exist")
	// ErrVendor: a vendor-specific bError (0x80..0xC0) not named above.
	ErrVendor = errors.New("vendor-specific error")
)

// Errors of the driver itself.
var (
	// ErrTimeout: the reader did not answer within the command timeout
	// (after honouring its time extension requests). It comes wrapped
	// together with card.ErrMute.
	ErrTimeout = errors.New("reader did not answer in time")
	// ErrReaderGone: the reader was unplugged or its interface failed.
	// It comes wrapped together with card.ErrRemoved.
	ErrReaderGone = errors.New("reader gone")
	// ErrReaderHung: the reader answered neither a command nor the
	// Abort that followed; the driver drops and reopens it.
	ErrReaderHung = errors.New("reader hung")
	// ErrUnsupported: the request needs something this reader, card or
	// driver cannot do (character level exchange, an APDU too long for
	// T=0, a protocol neither side supports, ...).
	ErrUnsupported = errors.New("not supported")
	// ErrPPS: the card rejected every speed the driver proposed.
	ErrPPS = errors.New("PPS failed")
)

type codeInfo struct {
	err  error
	name string
}

var errorCodes = map[byte]codeInfo{
	0xFF: {ErrCmdAborted, "CMD_ABORTED"},
	0xFE: {ErrICCMute, "ICC_MUTE"},
	0xFD: {ErrParity, "XFR_PARITY_ERROR"},
	0xFC: {ErrOverrun, "XFR_OVERRUN"},
	0xFB: {ErrHardware, "HW_ERROR"},
	0xF8: {ErrBadATRTS, "BAD_ATR_TS"},
	0xF7: {ErrBadATRTCK, "BAD_ATR_TCK"},
	0xF6: {ErrProtocolNotSupported, "ICC_PROTOCOL_NOT_SUPPORTED"},
	0xF5: {ErrClassNotSupported, "ICC_CLASS_NOT_SUPPORTED"},
	0xF4: {ErrProcedureByteConflict, "PROCEDURE_BYTE_CONFLICT"},
	0xF3: {ErrDeactivatedProtocol, "DEACTIVATED_PROTOCOL"},
	0xF2: {ErrBusyAutoSequence, "BUSY_WITH_AUTO_SEQUENCE"},
	0xF0: {ErrPINTimeout, "PIN_TIMEOUT"},
	0xEF: {ErrPINCancelled, "PIN_CANCELLED"},
	0xE0: {ErrSlotBusy, "CMD_SLOT_BUSY"},
	0xBB: {ErrEMVProtocol, "EMV protocol error"},
	0xA2: {ErrShortCircuit, "ICC short circuit"},
	0x00: {ErrCmdNotSupported, "CMD_NOT_SUPPORTED"},
	0x05: {ErrBadSlot, "bad bSlot"},
}

func codeOf(code byte) codeInfo {
	if ci, ok := errorCodes[code]; ok {
		return ci
	}
	switch {
	case code < 0x80:
		return codeInfo{ErrBadParameter, fmt.Sprintf("bad parameter at offset %d", code)}
	case code <= 0xC0:
		return codeInfo{ErrVendor, fmt.Sprintf("vendor error %#02x", code)}
	}
	return codeInfo{ErrVendor, fmt.Sprintf("RFU error %#02x", code)}
}

// SlotError is a command the reader answered with "failed", or whose
// ICC status forbids going on (no card, card inactive). It wraps the
// sentinel for its bError (when Failed) and card.ErrNoCard,
// card.ErrMute or card.ErrRemoved as fits, so callers use errors.Is.
type SlotError struct {
	Reader  string
	Slot    int
	Command MessageType
	Status  byte // bStatus
	Code    byte // bError, meaningful when Failed
	// Failed is set when bmCommandStatus says "failed"; otherwise the
	// ICC status alone is the problem.
	Failed bool
	// Removed is set when a card that was in use is gone.
	Removed bool
}

// ICC returns the ICC status the reader reported.
func (e *SlotError) ICC() ICCStatus { return ICCStatus(e.Status & 3) }

func (e *SlotError) Error() string {
	what := e.ICC().String()
	if e.Removed {
		what = "card removed"
	}
	if !e.Failed {
		return fmt.Sprintf("ccid: %s slot %d: %v: %s (bStatus %#02x)", e.Reader, e.Slot, e.Command, what, e.Status)
	}
	return fmt.Sprintf("ccid: %s slot %d: %v failed: %s (bError %#02x), %s",
		e.Reader, e.Slot, e.Command, codeOf(e.Code).err, e.Code, what)
}

// Unwrap returns the bError sentinel and the matching card error.
func (e *SlotError) Unwrap() []error {
	var errs []error
	if e.Failed {
		errs = append(errs, codeOf(e.Code).err)
	}
	switch {
	case e.Removed:
		errs = append(errs, card.ErrRemoved)
	case e.ICC() == ICCAbsent:
		errs = append(errs, card.ErrNoCard)
	case e.Failed && e.Code == 0xFE:
		errs = append(errs, card.ErrMute)
	}
	return errs
}

// ErrorCodeName returns the CCID name of a bError value, for logs.
func ErrorCodeName(code byte) string { return codeOf(code).name }
