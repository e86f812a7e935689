package ccid

import (
	"fmt"

	"github.com/wsrc-go/wsrc/card/atr"
)

// rateTolerance is how far (bit/s) a computed rate may be from one in
// the reader's list and still count as supported (libccid: ±2).
const rateTolerance = 2

// rateSupported reports whether the reader can run at rate: listed
// (within rateTolerance) when the reader gave a list, otherwise not
// above dwMaxDataRate.
func rateSupported(d Descriptor, rates []uint32, rate int) bool {
	if len(rates) == 0 {
		return rate <= int(d.MaxDataRate)+rateTolerance
	}
	for _, r := range rates {
		if diff := int(r) - rate; diff >= -rateTolerance && diff <= rateTolerance {
			return true
		}
	}
	return false
}

// speedCandidates returns the TA1 values (Fi index << 4 | Di index) to
// try for a card, fastest first, always ending with the default 0x11:
// the card's TA1 when the reader supports its rate, then the same Fi
// with ever smaller Di (ISO 7816-3 lets the host propose any Di up to
// the card's) while the rate is still above the default and supported.
// A card in specific mode (TA2) whose rate the reader cannot do is
// refused, as libccid does.
func speedCandidates(a *atr.ATR, d Descriptor, rates []uint32) ([]byte, error) {
	ta1, has := a.TA1()
	fi, di, ok := a.FiDi()
	if !has || !ok || ta1 == atr.DefaultTA1 {
		return []byte{atr.DefaultTA1}, nil
	}
	clock := int(d.DefaultClock)
	def := atr.BaudRate(atr.DefaultTA1, clock)
	var out []byte
	if r := atr.BaudRate(ta1, clock); r > def && rateSupported(d, rates, r) {
		out = append(out, ta1)
	} else if _, _, _, specific := a.SpecificMode(); specific && r > def {
		return nil, fmt.Errorf("%w: the card demands %d bit/s (TA1 %02X, specific mode) which the reader does not support",
			ErrUnsupported, r, ta1)
	}
	for d2 := di - 1; d2 >= 1; d2-- {
		if atr.DiTable[d2] == 0 {
			continue
		}
		t := byte(fi<<4 | d2)
		r := atr.BaudRate(t, clock)
		if r <= def {
			break
		}
		if rateSupported(d, rates, r) && !containsByte(out, t) {
			out = append(out, t)
		}
	}
	return append(out, atr.DefaultTA1), nil
}

func containsByte(s []byte, b byte) bool {
	for _, x := range s {
		if x == b {
			return true
		}
	}
	return false
}

// ppsRequest builds a PPS request for protocol proto, with PPS1 = ta1
// unless ta1 is the default.
func ppsRequest(proto int, ta1 byte) []byte {
	req := []byte{0xFF, byte(proto & 0x0F)}
	if ta1 != atr.DefaultTA1 {
		req[1] |= 0x10
		req = append(req, ta1)
	}
	var pck byte
	for _, b := range req {
		pck ^= b
	}
	return append(req, pck)
}

// ppsAccepted checks the card's PPS response (ISO 7816-3 §9.3) and
// returns the TA1 now in force: the echo of a successful request, or
// the default when the card answered without PPS1. ok is false when
// the response means the negotiation failed.
func ppsAccepted(req, resp []byte) (ta1 byte, ok bool) {
	if len(resp) < 3 || len(resp) > len(req) || resp[0] != 0xFF {
		return 0, false
	}
	var pck byte
	for _, b := range resp {
		pck ^= b
	}
	if pck != 0 || resp[1]&0x0F != req[1]&0x0F {
		return 0, false
	}
	if resp[1]&0x10 == 0 {
		return atr.DefaultTA1, true
	}
	if req[1]&0x10 == 0 || len(resp) < 4 || resp[2] != req[2] {
		return 0, false
	}
	return resp[2], true
}

// paramsT0 builds the 5-byte T=0 protocol data structure of
// SetParameters: bmFindexDindex, bmTCCKST0 (convention), bGuardTimeT0
// (TC1), bWaitingIntegerT0 (TC2), bClockStop.
func paramsT0(a *atr.ATR, ta1 byte) []byte {
	p := []byte{ta1, 0x00, 0x00, 0x0A, 0x00}
	if a == nil {
		return p
	}
	if a.Convention == atr.Inverse {
		p[1] |= 0x02
	}
	p[2] = byte(a.ExtraGuardTime())
	p[3] = byte(a.WI())
	return p
}

// paramsT1 builds the 7-byte T=1 protocol data structure:
// bmFindexDindex, bmTCCKST1 (0x10 | CRC | convention), bGuardTimeT1,
// bWaitingIntegersT1 (BWI/CWI), bClockStop, bIFSC, bNadValue.
func paramsT1(a *atr.ATR, ta1 byte) []byte {
	p := []byte{ta1, 0x10, 0x00, 0x4D, 0x00, 0x20, 0x00}
	if a == nil {
		return p
	}
	if a.CRC() {
		p[1] |= 0x01
	}
	if a.Convention == atr.Inverse {
		p[1] |= 0x02
	}
	p[2] = byte(a.ExtraGuardTime())
	if tb, ok := a.T1TB(); ok {
		p[3] = tb
	}
	p[5] = byte(a.IFSC())
	return p
}
