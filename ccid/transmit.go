package ccid

import (
	"context"
	"fmt"

	"github.com/wsrc-go/wsrc/card"
)

const (
	// maxT0Data is the largest command data field a T=0 TPDU carries
	// (P3 is one byte; the TPDU is at most 260 bytes).
	maxT0Data = 255
	// maxFollow bounds the GET RESPONSE / wrong-Le rounds of one T=0
	// APDU (as card.MaxFollow).
	maxFollow = card.MaxFollow
	// maxAPDUResponse bounds a reassembled response: 65536 data bytes
	// and the status word.
	maxAPDUResponse = 65536 + 2
	// maxEmptyBlocks bounds empty blocks in a chained response.
	maxEmptyBlocks = 2
)

// transmit sends one command APDU by the slot's exchange level and
// protocol and returns the response APDU. The caller holds the lock.
func (s *slot) transmit(ctx context.Context, apdu []byte) ([]byte, error) {
	if len(apdu) < 4 {
		return nil, fmt.Errorf("ccid: %s: %w: %d bytes, the header alone needs 4", s.name, card.ErrMalformedAPDU, len(apdu))
	}
	switch s.level {
	case LevelTPDU:
		if s.proto == 1 {
			if s.t1 == nil {
				return nil, fmt.Errorf("ccid: %s: T=1 not running (card deactivated): %w", s.name, card.ErrRemoved)
			}
			r, err := s.t1.Transmit(ctx, apdu)
			if err != nil {
				return nil, fmt.Errorf("ccid: %s: T=1: %w", s.name, err)
			}
			return r, nil
		}
		return s.transmitT0(ctx, apdu)
	case LevelShortAPDU:
		return s.transmitShort(ctx, apdu)
	case LevelExtendedAPDU:
		return s.transmitExtended(ctx, apdu)
	}
	return nil, fmt.Errorf("ccid: %s: %w: %v exchange", s.name, ErrUnsupported, s.level)
}

// xfrData sends one XfrBlock and returns its data, which must hold at
// least a status word.
func (s *slot) xfrData(ctx context.Context, data []byte) ([]byte, error) {
	r, err := s.xfr(ctx, 0, 0, data, s.timeout)
	if err != nil {
		return nil, err
	}
	if len(r.Data) < 2 {
		return nil, fmt.Errorf("ccid: %s: %w: response of %d bytes, no status word", s.name, ErrFrame, len(r.Data))
	}
	return r.Data, nil
}

// transmitT0 maps a command APDU onto T=0 TPDUs (ISO 7816-3 §12.2): case
// 1 gets P3=00, case 2 sends Le as P3, cases 3 and 4 send Lc and the
// data with Le dropped. For cases 2 and 4 the response is completed
// here: 6Cxx re-sends the TPDU with P3=xx, 61xx (and the GSM 9Fxx)
// fetches the data with GET RESPONSE, so a case-4 APDU gets its whole
// response. Extended lengths fit T=0 only when Nc ≤ 255; larger
// commands are refused (ISO 7816-3 would need ENVELOPE, which UICCs do
// not implement for this).
func (s *slot) transmitT0(ctx context.Context, apdu []byte) ([]byte, error) {
	c, err := card.ParseCommand(apdu)
	if err != nil {
		return nil, fmt.Errorf("ccid: %s: %w", s.name, err)
	}
	if len(c.Data) > maxT0Data {
		return nil, fmt.Errorf("ccid: %s: %w: T=0 carries at most %d command data bytes, this APDU has %d (ISO 7816-3 §12.2)",
			s.name, ErrUnsupported, maxT0Data, len(c.Data))
	}
	tpdu := make([]byte, 5, 5+len(c.Data))
	copy(tpdu, apdu[:4])
	switch c.Case() {
	case 2:
		tpdu[4] = byte(min(c.Ne, 256)) // 256 and more → 00
	case 3, 4:
		tpdu[4] = byte(len(c.Data))
		tpdu = append(tpdu, c.Data...)
	}
	r, err := s.xfrData(ctx, tpdu)
	if err != nil || c.Ne == 0 {
		return r, err
	}
	return s.followT0(ctx, c.CLA, tpdu, r)
}

// followT0 completes a T=0 response (see transmitT0).
func (s *slot) followT0(ctx context.Context, cla byte, last, r []byte) ([]byte, error) {
	var acc []byte
	for i := 0; ; i++ {
		n := len(r) - 2
		sw1, sw2 := r[n], r[n+1]
		var next []byte
		switch {
		case sw1 == 0x6C && len(last) == 5:
			next = []byte{last[0], last[1], last[2], last[3], sw2}
		case sw1 == 0x61 || sw1 == 0x9F:
			next = []byte{cla, 0xC0, 0x00, 0x00, sw2}
		}
		if next == nil {
			if acc == nil {
				return r, nil
			}
			return append(acc, r...), nil
		}
		if i >= maxFollow || len(acc)+n > maxAPDUResponse {
			return nil, fmt.Errorf("ccid: %s: %w after %d rounds and %d bytes", s.name, card.ErrFollowLimit, i, len(acc)+n)
		}
		acc = append(acc, r[:n]...)
		last = next
		var err error
		if r, err = s.xfrData(ctx, next); err != nil {
			return nil, fmt.Errorf("following SW %02X%02X: %w", sw1, sw2, err)
		}
	}
}

// transmitShort sends an APDU to a short-APDU reader in one XfrBlock.
// An extended-form APDU whose lengths fit the short form is re-encoded;
// one that needs extended lengths is refused.
func (s *slot) transmitShort(ctx context.Context, apdu []byte) ([]byte, error) {
	if c, err := card.ParseCommand(apdu); err == nil && c.Extended {
		if len(c.Data) > card.MaxShortNc || c.Ne > card.MaxShortNe {
			return nil, fmt.Errorf("ccid: %s: %w: extended APDU (Nc=%d, Ne=%d) on a short-APDU reader",
				s.name, ErrUnsupported, len(c.Data), c.Ne)
		}
		c.Extended = false
		apdu = c.Bytes()
	}
	return s.xfrData(ctx, apdu)
}

// transmitExtended sends an APDU to an extended-APDU reader, chaining
// the command in blocks of dwMaxCCIDMessageLength-10 bytes (wLevelParameter
// 01, 03, ..., 02) and the response as the reader chains it (asking for
// each further block with wLevelParameter 0010), as libccid's
// CmdXfrBlockAPDU_extended does.
func (s *slot) transmitExtended(ctx context.Context, apdu []byte) ([]byte, error) {
	max := s.l.maxCommand() - HeaderLen
	var r Message
	var err error
	if len(apdu) <= max {
		r, err = s.xfr(ctx, 0, ChainNone, apdu, s.timeout)
	} else {
		for off := 0; off < len(apdu); off += max {
			end := min(off+max, len(apdu))
			level := uint16(ChainContinue)
			switch {
			case off == 0:
				level = ChainBegin
			case end == len(apdu):
				level = ChainEnd
			}
			if r, err = s.xfr(ctx, 0, level, apdu[off:end], s.timeout); err != nil {
				return nil, fmt.Errorf("sending block at %d of %d: %w", off, len(apdu), err)
			}
		}
	}
	if err != nil {
		return nil, err
	}
	resp := r.Data
	for empty := 0; r.Chain() == ChainBegin || r.Chain() == ChainContinue || r.Chain() == ChainMore; {
		if r, err = s.xfr(ctx, 0, ChainMore, nil, s.timeout); err != nil {
			return nil, fmt.Errorf("receiving block at %d: %w", len(resp), err)
		}
		if empty++; len(r.Data) > 0 {
			empty = 0
		}
		if empty > maxEmptyBlocks {
			return nil, fmt.Errorf("ccid: %s: %w: %d empty response blocks in a row", s.name, ErrFrame, empty)
		}
		if len(resp)+len(r.Data) > maxAPDUResponse {
			return nil, fmt.Errorf("ccid: %s: %w: chained response longer than %d bytes", s.name, ErrFrame, maxAPDUResponse)
		}
		resp = append(resp, r.Data...)
	}
	if len(resp) < 2 {
		return nil, fmt.Errorf("ccid: %s: %w: response of %d bytes, no status word", s.name, ErrFrame, len(resp))
	}
	return resp, nil
}
