package pcsc

import (
	"errors"
	"fmt"

	"github.com/wsrc-go/wsrc/card"
)

// Code is a PC/SC return code (SCARD_E_*, SCARD_W_*, SCARD_F_*). It is an
// error itself, so errors.Is(err, pcsc.CodeSharingViolation) works on any
// error this package returns.
type Code uint32

// The PC/SC return codes this package names. Codes not listed here still
// arrive as a Code; their String is the hex value.
const (
	CodeInternalError        Code = 0x80100001 // SCARD_F_INTERNAL_ERROR
	CodeCancelled            Code = 0x80100002 // SCARD_E_CANCELLED
	CodeInvalidHandle        Code = 0x80100003 // SCARD_E_INVALID_HANDLE
	CodeInvalidParameter     Code = 0x80100004 // SCARD_E_INVALID_PARAMETER
	CodeInvalidTarget        Code = 0x80100005 // SCARD_E_INVALID_TARGET
	CodeNoMemory             Code = 0x80100006 // SCARD_E_NO_MEMORY
	CodeWaitedTooLong        Code = 0x80100007 // SCARD_F_WAITED_TOO_LONG
	CodeInsufficientBuffer   Code = 0x80100008 // SCARD_E_INSUFFICIENT_BUFFER
	CodeUnknownReader        Code = 0x80100009 // SCARD_E_UNKNOWN_READER
	CodeTimeout              Code = 0x8010000A // SCARD_E_TIMEOUT
	CodeSharingViolation     Code = 0x8010000B // SCARD_E_SHARING_VIOLATION
	CodeNoSmartcard          Code = 0x8010000C // SCARD_E_NO_SMARTCARD
	CodeUnknownCard          Code = 0x8010000D // SCARD_E_UNKNOWN_CARD
	CodeCantDispose          Code = 0x8010000E // SCARD_E_CANT_DISPOSE
	CodeProtoMismatch        Code = 0x8010000F // SCARD_E_PROTO_MISMATCH
	CodeNotReady             Code = 0x80100010 // SCARD_E_NOT_READY
	CodeInvalidValue         Code = 0x80100011 // SCARD_E_INVALID_VALUE
	CodeSystemCancelled      Code = 0x80100012 // SCARD_E_SYSTEM_CANCELLED
	CodeCommError            Code = 0x80100013 // SCARD_F_COMM_ERROR
	CodeUnknownError         Code = 0x80100014 // SCARD_F_UNKNOWN_ERROR
	CodeInvalidATR           Code = 0x80100015 // SCARD_E_INVALID_ATR
	CodeNotTransacted        Code = 0x80100016 // SCARD_E_NOT_TRANSACTED
	CodeReaderUnavailable    Code = 0x80100017 // SCARD_E_READER_UNAVAILABLE
	CodeShutdown             Code = 0x80100018 // SCARD_P_SHUTDOWN
	CodePCITooSmall          Code = 0x80100019 // SCARD_E_PCI_TOO_SMALL
	CodeReaderUnsupported    Code = 0x8010001A // SCARD_E_READER_UNSUPPORTED
	CodeDuplicateReader      Code = 0x8010001B // SCARD_E_DUPLICATE_READER
	CodeCardUnsupported      Code = 0x8010001C // SCARD_E_CARD_UNSUPPORTED
	CodeNoService            Code = 0x8010001D // SCARD_E_NO_SERVICE
	CodeServiceStopped       Code = 0x8010001E // SCARD_E_SERVICE_STOPPED
	CodeUnsupportedFeature   Code = 0x8010001F // SCARD_E_UNSUPPORTED_FEATURE
	CodeNoReadersAvailable   Code = 0x8010002E // SCARD_E_NO_READERS_AVAILABLE
	CodeCommDataLost         Code = 0x8010002F // SCARD_E_COMM_DATA_LOST
	CodeServerTooBusy        Code = 0x80100031 // SCARD_E_SERVER_TOO_BUSY
	CodeUnsupportedCard      Code = 0x80100065 // SCARD_W_UNSUPPORTED_CARD
	CodeUnresponsiveCard     Code = 0x80100066 // SCARD_W_UNRESPONSIVE_CARD
	CodeUnpoweredCard        Code = 0x80100067 // SCARD_W_UNPOWERED_CARD
	CodeResetCard            Code = 0x80100068 // SCARD_W_RESET_CARD
	CodeRemovedCard          Code = 0x80100069 // SCARD_W_REMOVED_CARD
	CodeSecurityViolation    Code = 0x8010006A // SCARD_W_SECURITY_VIOLATION
	CodeWrongCHV             Code = 0x8010006B // SCARD_W_WRONG_CHV
	CodeCHVBlocked           Code = 0x8010006C // SCARD_W_CHV_BLOCKED
	CodeEOF                  Code = 0x8010006D // SCARD_W_EOF
	CodeCancelledByUser      Code = 0x8010006E // SCARD_W_CANCELLED_BY_USER
	CodeCardNotAuthenticated Code = 0x8010006F // SCARD_W_CARD_NOT_AUTHENTICATED
)

var codeNames = map[Code]string{
	CodeInternalError:        "SCARD_F_INTERNAL_ERROR",
	CodeCancelled:            "SCARD_E_CANCELLED",
	CodeInvalidHandle:        "SCARD_E_INVALID_HANDLE",
	CodeInvalidParameter:     "SCARD_E_INVALID_PARAMETER",
	CodeInvalidTarget:        "SCARD_E_INVALID_TARGET",
	CodeNoMemory:             "SCARD_E_NO_MEMORY",
	CodeWaitedTooLong:        "SCARD_F_WAITED_TOO_LONG",
	CodeInsufficientBuffer:   "SCARD_E_INSUFFICIENT_BUFFER",
	CodeUnknownReader:        "SCARD_E_UNKNOWN_READER",
	CodeTimeout:              "SCARD_E_TIMEOUT",
	CodeSharingViolation:     "SCARD_E_SHARING_VIOLATION",
	CodeNoSmartcard:          "SCARD_E_NO_SMARTCARD",
	CodeUnknownCard:          "SCARD_E_UNKNOWN_CARD",
	CodeCantDispose:          "SCARD_E_CANT_DISPOSE",
	CodeProtoMismatch:        "SCARD_E_PROTO_MISMATCH",
	CodeNotReady:             "SCARD_E_NOT_READY",
	CodeInvalidValue:         "SCARD_E_INVALID_VALUE",
	CodeSystemCancelled:      "SCARD_E_SYSTEM_CANCELLED",
	CodeCommError:            "SCARD_F_COMM_ERROR",
	CodeUnknownError:         "SCARD_F_UNKNOWN_ERROR",
	CodeInvalidATR:           "SCARD_E_INVALID_ATR",
	CodeNotTransacted:        "SCARD_E_NOT_TRANSACTED",
	CodeReaderUnavailable:    "SCARD_E_READER_UNAVAILABLE",
	CodeShutdown:             "SCARD_P_SHUTDOWN",
	CodePCITooSmall:          "SCARD_E_PCI_TOO_SMALL",
	CodeReaderUnsupported:    "SCARD_E_READER_UNSUPPORTED",
	CodeDuplicateReader:      "SCARD_E_DUPLICATE_READER",
	CodeCardUnsupported:      "SCARD_E_CARD_UNSUPPORTED",
	CodeNoService:            "SCARD_E_NO_SERVICE",
	CodeServiceStopped:       "SCARD_E_SERVICE_STOPPED",
	CodeUnsupportedFeature:   "SCARD_E_UNSUPPORTED_FEATURE",
	CodeNoReadersAvailable:   "SCARD_E_NO_READERS_AVAILABLE",
	CodeCommDataLost:         "SCARD_E_COMM_DATA_LOST",
	CodeServerTooBusy:        "SCARD_E_SERVER_TOO_BUSY",
	CodeUnsupportedCard:      "SCARD_W_UNSUPPORTED_CARD",
	CodeUnresponsiveCard:     "SCARD_W_UNRESPONSIVE_CARD",
	CodeUnpoweredCard:        "SCARD_W_UNPOWERED_CARD",
	CodeResetCard:            "SCARD_W_RESET_CARD",
	CodeRemovedCard:          "SCARD_W_REMOVED_CARD",
	CodeSecurityViolation:    "SCARD_W_SECURITY_VIOLATION",
	CodeWrongCHV:             "SCARD_W_WRONG_CHV",
	CodeCHVBlocked:           "SCARD_W_CHV_BLOCKED",
	CodeEOF:                  "SCARD_W_EOF",
	CodeCancelledByUser:      "SCARD_W_CANCELLED_BY_USER",
	CodeCardNotAuthenticated: "SCARD_W_CARD_NOT_AUTHENTICATED",
}

// String returns the PC/SC name of the code, e.g. "SCARD_W_REMOVED_CARD",
// or "SCARD_0x%08X" for a code this package does not know.
func (c Code) String() string {
	if n, ok := codeNames[c]; ok {
		return n
	}
	return fmt.Sprintf("SCARD_0x%08X", uint32(c))
}

// Error returns the code's name and value.
func (c Code) Error() string {
	return fmt.Sprintf("%s (0x%08X)", c.String(), uint32(c))
}

// ErrServiceUnavailable is wrapped by every error that means pcscd is not
// running or went away (SCARD_E_NO_SERVICE, SCARD_E_SERVICE_STOPPED).
// Handles from before are dead; Watch re-establishes its context by itself,
// a Card must be reopened.
var ErrServiceUnavailable = errors.New("pcscd unavailable")

// ErrReaderUnavailable is wrapped by errors that mean the reader went away
// or cannot be used (SCARD_E_READER_UNAVAILABLE, SCARD_E_UNKNOWN_READER).
var ErrReaderUnavailable = errors.New("reader unavailable")

// Error is a failed PC/SC call. It carries the call, the reader (when the
// call concerned one) and the return code. errors.Is matches the Code and
// the sentinels the code stands for: card.ErrRemoved, card.ErrNoCard,
// card.ErrMute, card.ErrReset, ErrServiceUnavailable, ErrReaderUnavailable.
type Error struct {
	Op     string // PC/SC call, e.g. "SCardTransmit"
	Reader string // reader name, "" when the call concerns no reader
	Code   Code
	// Removed is set when the card is known to be gone (or its handle
	// dead) even though Code alone does not say so, e.g. a
	// SCARD_E_NOT_TRANSACTED after which SCardStatus reported removal.
	Removed bool
}

// Error renders e.g. `SCardTransmit on reader "Virtual PCD 00 00":
// SCARD_W_REMOVED_CARD (0x80100069)`.
func (e *Error) Error() string {
	msg := fmt.Sprintf("%s: %v", e.Op, e.Code)
	if e.Reader != "" {
		msg = fmt.Sprintf("%s on reader %q: %v", e.Op, e.Reader, e.Code)
	}
	if e.Code == CodeResetCard {
		msg += ": " + card.ErrReset.Error()
	}
	if e.Removed && e.Code != CodeRemovedCard {
		msg += ": " + card.ErrRemoved.Error()
	}
	return msg
}

// Unwrap returns the Code and the sentinels it stands for.
func (e *Error) Unwrap() []error {
	errs := []error{e.Code}
	switch e.Code {
	case CodeRemovedCard:
		errs = append(errs, card.ErrRemoved)
	case CodeNoSmartcard:
		errs = append(errs, card.ErrNoCard)
	case CodeUnresponsiveCard:
		errs = append(errs, card.ErrMute)
	case CodeResetCard:
		errs = append(errs, card.ErrReset)
	case CodeNoService, CodeServiceStopped:
		errs = append(errs, ErrServiceUnavailable)
	case CodeReaderUnavailable, CodeUnknownReader:
		errs = append(errs, ErrReaderUnavailable)
	}
	if e.Removed && e.Code != CodeRemovedCard {
		errs = append(errs, card.ErrRemoved)
	}
	return errs
}

// wrapErr turns an error from the scard seam into an *Error naming op and
// reader. Errors that are not PC/SC codes (e.g. a reader name with a NUL
// byte) are wrapped with the same context.
func wrapErr(op, reader string, err error) error {
	if err == nil {
		return nil
	}
	var c Code
	if errors.As(err, &c) {
		return &Error{Op: op, Reader: reader, Code: c}
	}
	if reader == "" {
		return fmt.Errorf("%s: %w", op, err)
	}
	return fmt.Errorf("%s on reader %q: %w", op, reader, err)
}

// isCode reports whether err is the PC/SC code c.
func isCode(err error, c Code) bool {
	var got Code
	return errors.As(err, &got) && got == c
}
