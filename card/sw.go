package card

import (
	"fmt"
)

// StatusError is a status word that reports a failure or a warning.
// Compare with the Err* sentinels through errors.Is, or get the SW with
// errors.As:
//
//	if errors.Is(err, card.ErrFileNotFound) { ... }
//	var se *card.StatusError
//	if errors.As(err, &se) { log(se.SW) }
type StatusError struct {
	SW uint16
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("%04x: %s", e.SW, SWMeaning(e.SW))
}

// Is matches the sentinel classes below and any *StatusError with the
// same SW.
func (e *StatusError) Is(target error) bool {
	switch t := target.(type) {
	case *swClass:
		return t.match(e.SW)
	case *StatusError:
		return t.SW == e.SW
	}
	return false
}

// VerifyRetriesError is 63Cx: verification failed, Left tries remain.
// With Left 0 it also matches ErrAuthBlocked.
type VerifyRetriesError struct {
	Left int
}

func (e *VerifyRetriesError) Error() string {
	return fmt.Sprintf("63c%x: verification failed, %d retries left", e.Left&0xf, e.Left)
}

// Is matches ErrVerifyFailed, ErrAuthBlocked when no retries are left, and
// a *StatusError or *VerifyRetriesError for the same SW.
func (e *VerifyRetriesError) Is(target error) bool {
	switch t := target.(type) {
	case *swClass:
		return t == ErrVerifyFailed || (t == ErrAuthBlocked && e.Left == 0)
	case *StatusError:
		return t.SW == 0x63c0|uint16(e.Left&0xf)
	case *VerifyRetriesError:
		return t.Left == e.Left
	}
	return false
}

// swClass is a sentinel matching a set of status words.
type swClass struct {
	text  string
	match func(sw uint16) bool
}

func (c *swClass) Error() string { return c.text }

func swIs(sws ...uint16) func(uint16) bool {
	return func(sw uint16) bool {
		for _, s := range sws {
			if s == sw {
				return true
			}
		}
		return false
	}
}

// Sentinels for errors.Is on errors from SWError (and anything wrapping
// them). Each matches the status words given in its comment.
var (
	// ErrFileNotFound: 6A82 file or application not found.
	ErrFileNotFound error = &swClass{"file or application not found", swIs(0x6a82)}
	// ErrRecordNotFound: 6A83 record not found.
	ErrRecordNotFound error = &swClass{"record not found", swIs(0x6a83)}
	// ErrWrongLength: 6700 and the proprietary 67xx, wrong length.
	ErrWrongLength error = &swClass{"wrong length", func(sw uint16) bool { return sw>>8 == 0x67 }}
	// ErrWrongLe: 6Cxx, wrong Le (SW2 is the right one).
	ErrWrongLe error = &swClass{"wrong Le", func(sw uint16) bool { return sw>>8 == 0x6c }}
	// ErrSecurityNotSatisfied: 6982 security status not satisfied (and
	// GSM's 9804 access condition not fulfilled).
	ErrSecurityNotSatisfied error = &swClass{"security status not satisfied", swIs(0x6982, 0x9804)}
	// ErrAuthBlocked: 6983 authentication method blocked (and GSM's 9840).
	// A VerifyRetriesError with no retries left matches it too.
	ErrAuthBlocked error = &swClass{"authentication method blocked", swIs(0x6983, 0x9840)}
	// ErrVerifyFailed: 63Cx (returned as *VerifyRetriesError) and 6300.
	ErrVerifyFailed error = &swClass{"verification failed", swIs(0x6300)}
	// ErrConditionsNotSatisfied: 6985 conditions of use not satisfied.
	ErrConditionsNotSatisfied error = &swClass{"conditions of use not satisfied", swIs(0x6985)}
	// ErrCommandNotAllowed: 6900, 6981 (incompatible file structure),
	// 6986 (no current EF).
	ErrCommandNotAllowed error = &swClass{"command not allowed", swIs(0x6900, 0x6981, 0x6986)}
	// ErrINSNotSupported: 6D00 instruction not supported.
	ErrINSNotSupported error = &swClass{"instruction not supported", swIs(0x6d00)}
	// ErrCLANotSupported: 6E00 class not supported, 6881 logical
	// channel and 6882 secure messaging not supported.
	ErrCLANotSupported error = &swClass{"class not supported", swIs(0x6e00, 0x6881, 0x6882)}
	// ErrWrongP1P2: 6A86 and 6B00, incorrect parameters P1-P2.
	ErrWrongP1P2 error = &swClass{"incorrect parameters P1-P2", swIs(0x6a86, 0x6b00)}
	// ErrWrongData: 6A80 incorrect parameters in the data field.
	ErrWrongData error = &swClass{"incorrect data field", swIs(0x6a80)}
	// ErrReferencedDataNotFound: 6A88 referenced data not found.
	ErrReferencedDataNotFound error = &swClass{"referenced data not found", swIs(0x6a88)}
)

// SWError returns nil for a status word of normal processing (9000, and
// 91xx/92xx: success with a pending proactive command or extra
// information), a *VerifyRetriesError for 63Cx, and a *StatusError for
// everything else, including 61xx and 6Cxx (they mean the GET RESPONSE /
// wrong-Le handling of TransmitFollow was skipped).
func SWError(sw uint16) error {
	switch {
	case sw == 0x9000, sw>>8 == 0x91, sw>>8 == 0x92:
		return nil
	case sw&0xfff0 == 0x63c0:
		return &VerifyRetriesError{Left: int(sw & 0xf)}
	}
	return &StatusError{SW: sw}
}

// ResponseError splits a response APDU and returns its data and
// SWError of its status word.
func ResponseError(r []byte) ([]byte, error) {
	data, sw, err := SplitResponse(r)
	if err != nil {
		return nil, err
	}
	return data, SWError(sw)
}

var swMeanings = map[uint16]string{
	0x9000: "normal processing",
	0x6200: "warning, state of non-volatile memory unchanged",
	0x6281: "part of returned data may be corrupted",
	0x6282: "end of file or record reached before reading Ne bytes",
	0x6283: "selected file invalidated",
	0x6285: "selected file in termination state",
	0x62f1: "more data available",
	0x62f3: "response data available with GET RESPONSE",
	0x6300: "verification failed",
	0x63f1: "more data expected",
	0x6400: "execution error, state of non-volatile memory unchanged",
	0x6500: "execution error, state of non-volatile memory changed",
	0x6581: "memory problem",
	0x6700: "wrong length",
	0x6800: "function in CLA not supported",
	0x6881: "logical channel not supported",
	0x6882: "secure messaging not supported",
	0x6900: "command not allowed",
	0x6981: "command incompatible with file structure",
	0x6982: "security status not satisfied",
	0x6983: "authentication method blocked",
	0x6984: "referenced data invalidated",
	0x6985: "conditions of use not satisfied",
	0x6986: "command not allowed (no EF selected)",
	0x6989: "command not allowed, secure channel security not satisfied",
	0x6a80: "incorrect parameters in the data field",
	0x6a81: "function not supported",
	0x6a82: "file or application not found",
	0x6a83: "record not found",
	0x6a84: "not enough memory space",
	0x6a86: "incorrect parameters P1-P2",
	0x6a87: "Lc inconsistent with P1-P2",
	0x6a88: "referenced data not found",
	0x6b00: "wrong parameters P1-P2 (offset outside the EF)",
	0x6d00: "instruction code not supported or invalid",
	0x6e00: "class not supported",
	0x6f00: "technical problem, no precise diagnosis",
	0x9300: "SIM application toolkit busy",
	0x9400: "no EF selected",
	0x9402: "out of range (invalid address)",
	0x9404: "file ID not found / pattern not found",
	0x9408: "file inconsistent with the command",
	0x9802: "no CHV initialised",
	0x9804: "access condition not fulfilled",
	0x9808: "in contradiction with CHV status",
	0x9810: "in contradiction with invalidation status",
	0x9840: "CHV blocked / unsuccessful verification, no attempt left",
	0x9850: "increase cannot be performed, max value reached",
	0x9862: "authentication error, application specific",
}

// SWMeaning returns a short English meaning of a status word, from
// ISO/IEC 7816-4, ETSI TS 102 221 and 3GPP TS 51.011.
func SWMeaning(sw uint16) string {
	if m, ok := swMeanings[sw]; ok {
		return m
	}
	sw1, sw2 := byte(sw>>8), int(sw&0xff)
	switch sw1 {
	case 0x61, 0x9f:
		if sw2 == 0 {
			return "256 or more response bytes available"
		}
		return fmt.Sprintf("%d response bytes available", sw2)
	case 0x6c:
		if sw2 == 0 {
			return "wrong Le, 256 bytes available"
		}
		return fmt.Sprintf("wrong Le, %d bytes available", sw2)
	case 0x63:
		if sw2&0xf0 == 0xc0 {
			return fmt.Sprintf("verification failed, %d retries left", sw2&0xf)
		}
		return "warning, state of non-volatile memory changed"
	case 0x91:
		return fmt.Sprintf("normal processing, proactive command of %d bytes pending", sw2)
	case 0x92:
		return "normal processing with extra information"
	case 0x62:
		return "warning, state of non-volatile memory unchanged"
	case 0x64, 0x65, 0x66:
		return "execution error"
	case 0x67:
		return "wrong length"
	case 0x68:
		return "function in CLA not supported"
	case 0x69:
		return "command not allowed"
	case 0x6a, 0x6b:
		return "wrong parameters"
	case 0x6d:
		return "instruction code not supported or invalid"
	case 0x6e:
		return "class not supported"
	case 0x6f:
		return "technical problem"
	case 0x98:
		return "security error"
	}
	return "unknown status"
}
