package card

import (
	"errors"
	"fmt"
)

// ErrMalformedAPDU is wrapped by every error about an APDU whose bytes do
// not follow ISO/IEC 7816-4 (lengths that do not add up, too short).
var ErrMalformedAPDU = errors.New("malformed APDU")

// Maximum lengths ISO/IEC 7816-4 can encode.
const (
	// MaxShortNc is the largest command data field of a short APDU.
	MaxShortNc = 255
	// MaxShortNe is the largest expected response length of a short APDU (Le=00).
	MaxShortNe = 256
	// MaxExtendedNc is the largest command data field of an extended APDU.
	MaxExtendedNc = 65535
	// MaxExtendedNe is the largest expected response length of an extended APDU (Le=0000).
	MaxExtendedNe = 65536
)

// Command is a parsed command APDU (ISO/IEC 7816-4 clause 5.1).
type Command struct {
	CLA, INS, P1, P2 byte
	// Data is the command data field (Nc = len(Data)).
	Data []byte
	// Ne is the maximum number of response bytes expected: 0 when the
	// APDU has no Le field, 256 for a short Le of 00, 65536 for an
	// extended Le of 0000.
	Ne int
	// Extended is true when the length fields use the extended
	// (three- or two-byte) form.
	Extended bool
}

// ParseCommand parses a command APDU in any of the cases 1, 2S, 3S, 4S,
// 2E, 3E and 4E. The returned Command's Data aliases b.
//
// Errors wrap ErrMalformedAPDU and say which length did not add up.
func ParseCommand(b []byte) (Command, error) {
	if len(b) < 4 {
		return Command{}, fmt.Errorf("%w: %d bytes, the header alone needs 4", ErrMalformedAPDU, len(b))
	}
	c := Command{CLA: b[0], INS: b[1], P1: b[2], P2: b[3]}
	body := b[4:]
	switch {
	case len(body) == 0: // case 1
		return c, nil
	case len(body) == 1: // case 2S
		c.Ne = shortNe(body[0])
		return c, nil
	case body[0] != 0: // case 3S or 4S
		nc := int(body[0])
		switch len(body) {
		case 1 + nc:
			c.Data = body[1:]
		case 2 + nc:
			c.Data = body[1 : 1+nc]
			c.Ne = shortNe(body[1+nc])
		default:
			return Command{}, fmt.Errorf("%w: short Lc=%d needs %d or %d bytes after it, got %d",
				ErrMalformedAPDU, nc, nc, nc+1, len(body)-1)
		}
		return c, nil
	}
	// body[0] == 0 and at least two bytes: extended form.
	c.Extended = true
	switch {
	case len(body) == 2:
		return Command{}, fmt.Errorf("%w: 00 after the header must be followed by a two-byte extended length, got 1 byte",
			ErrMalformedAPDU)
	case len(body) == 3: // case 2E
		c.Ne = extendedNe(body[1], body[2])
		return c, nil
	}
	nc := int(body[1])<<8 | int(body[2])
	if nc == 0 {
		return Command{}, fmt.Errorf("%w: extended Lc=0000 followed by %d bytes", ErrMalformedAPDU, len(body)-3)
	}
	rest := body[3:]
	switch len(rest) {
	case nc:
		c.Data = rest
	case nc + 2:
		c.Data = rest[:nc]
		c.Ne = extendedNe(rest[nc], rest[nc+1])
	default:
		return Command{}, fmt.Errorf("%w: extended Lc=%d needs %d or %d bytes after it, got %d",
			ErrMalformedAPDU, nc, nc, nc+2, len(rest))
	}
	return c, nil
}

func shortNe(le byte) int {
	if le == 0 {
		return MaxShortNe
	}
	return int(le)
}

func extendedNe(hi, lo byte) int {
	n := int(hi)<<8 | int(lo)
	if n == 0 {
		return MaxExtendedNe
	}
	return n
}

// Case returns the ISO/IEC 7816-3 case of the command: 1 (no data, no
// Le), 2 (Le only), 3 (data only) or 4 (data and Le). Extended tells short
// from extended.
func (c Command) Case() int {
	switch {
	case len(c.Data) == 0 && c.Ne <= 0:
		return 1
	case len(c.Data) == 0:
		return 2
	case c.Ne <= 0:
		return 3
	default:
		return 4
	}
}

// Validate reports whether the command can be encoded: Nc at most 65535,
// Ne between 0 and 65536.
func (c Command) Validate() error {
	if len(c.Data) > MaxExtendedNc {
		return fmt.Errorf("%w: %d data bytes, at most %d fit", ErrMalformedAPDU, len(c.Data), MaxExtendedNc)
	}
	if c.Ne < 0 || c.Ne > MaxExtendedNe {
		return fmt.Errorf("%w: Ne=%d outside 0..%d", ErrMalformedAPDU, c.Ne, MaxExtendedNe)
	}
	return nil
}

// Bytes encodes the command. It uses the extended form when Extended is
// set or when Nc > 255 or Ne > 256 need it, the short form otherwise.
// Bytes returns nil for a command that Validate rejects.
func (c Command) Bytes() []byte {
	if c.Validate() != nil {
		return nil
	}
	ext := c.Extended || len(c.Data) > MaxShortNc || c.Ne > MaxShortNe
	b := make([]byte, 4, 4+3+len(c.Data)+3)
	b[0], b[1], b[2], b[3] = c.CLA, c.INS, c.P1, c.P2
	if len(c.Data) > 0 {
		if ext {
			b = append(b, 0, byte(len(c.Data)>>8), byte(len(c.Data)))
		} else {
			b = append(b, byte(len(c.Data)))
		}
		b = append(b, c.Data...)
	}
	if c.Ne > 0 {
		switch {
		case !ext:
			b = append(b, byte(c.Ne)) // 256 → 00
		case len(c.Data) == 0:
			b = append(b, 0, byte(c.Ne>>8), byte(c.Ne)) // 65536 → 0000
		default:
			b = append(b, byte(c.Ne>>8), byte(c.Ne))
		}
	}
	return b
}

// ErrShortResponse is returned for a response APDU without a status word.
var ErrShortResponse = errors.New("response APDU shorter than its 2-byte status word")

// SplitResponse splits a response APDU into its data and status word.
// The returned data aliases r.
func SplitResponse(r []byte) (data []byte, sw uint16, err error) {
	if len(r) < 2 {
		return nil, 0, fmt.Errorf("%w: %d bytes", ErrShortResponse, len(r))
	}
	n := len(r) - 2
	return r[:n], uint16(r[n])<<8 | uint16(r[n+1]), nil
}
