package card

import (
	"context"
	"errors"
	"fmt"
)

// MaxFollow bounds the exchanges TransmitFollow and Identify make for one
// command: enough GET RESPONSEs for 65536 bytes in 256-byte pieces plus a
// wrong-Le re-issue, and far fewer than a broken card's endless 61xx chain.
const MaxFollow = 300

// ErrFollowLimit is returned when a card keeps answering 61xx (or 6Cxx)
// beyond MaxFollow exchanges.
var ErrFollowLimit = errors.New("card never finished its response (too many GET RESPONSE rounds)")

// TransmitFollow sends cmd and returns the complete response the way
// pySim's card client gets it from its reader's send_apdu on T=0
// (pySim/transport/__init__.py, LinkBaseTpdu.__send_apdu_T0 at 671b0f1):
//
//   - SW1=61 (or 9F, the GSM equivalent): send GET RESPONSE
//     <CLA of cmd> C0 00 00 <SW2> and append its data; repeat while the
//     answer is again 61xx/9Fxx.
//   - SW1=6C: re-send the last command (cmd or the GET RESPONSE) with
//     Le=SW2 (00 meaning 256).
//
// Where we differ from pySim, on purpose:
//   - pySim also answers 62xx and 63xx with GET RESPONSE (Le=SW2). On a
//     real card that turns a VERIFY's 63Cx "n retries left" into the
//     status of a bogus GET RESPONSE, so TransmitFollow returns 62xx/63xx
//     untouched. (Identify does copy pySim's rule: it is pySim's server.)
//   - pySim re-sends only CLA INS P1 P2 Le on 6Cxx and drops data
//     already gathered; TransmitFollow keeps the command data and the
//     gathered data, and follows a 61xx that answers the re-send.
//   - Both loops are bounded by MaxFollow (ErrFollowLimit).
//
// cmd is sent as it is even if ParseCommand rejects it (the card answers
// for itself); only a command shorter than its 4-byte header is refused.
// Errors from t are returned wrapped, with the partial response dropped.
func TransmitFollow(ctx context.Context, t Transmitter, cmd []byte) ([]byte, error) {
	if len(cmd) < 4 {
		return nil, fmt.Errorf("%w: %d bytes, the header alone needs 4", ErrMalformedAPDU, len(cmd))
	}
	cur := cmd
	var acc []byte
	for i := 0; i < MaxFollow; i++ {
		r, err := t.Transmit(ctx, cur)
		if err != nil {
			if i == 0 {
				return nil, err
			}
			return nil, fmt.Errorf("following %02x%02x: %w", cur[0], cur[1], err)
		}
		data, sw, err := SplitResponse(r)
		if err != nil {
			return nil, err
		}
		switch byte(sw >> 8) {
		case 0x61, 0x9f:
			acc = append(acc, data...)
			cur = getResponse(cmd[0], byte(sw))
		case 0x6c:
			acc = append(acc, data...) // normally empty
			cur = withLe(cur, byte(sw))
		default:
			if acc == nil {
				return r, nil
			}
			return append(acc, r...), nil
		}
	}
	return nil, fmt.Errorf("%w: more than %d exchanges", ErrFollowLimit, MaxFollow)
}

// getResponse builds GET RESPONSE <cla> C0 00 00 <le>, as pySim does:
// the class byte is copied from the command being followed.
func getResponse(cla, le byte) []byte {
	return []byte{cla, 0xc0, 0x00, 0x00, le}
}

// withLe returns cmd with its Le replaced by the short Le le (00 = 256),
// keeping the command data. A command that does not parse keeps only
// its header, as pySim does.
func withLe(cmd []byte, le byte) []byte {
	c, err := ParseCommand(cmd)
	if err != nil {
		return []byte{cmd[0], cmd[1], cmd[2], cmd[3], le}
	}
	c.Ne = shortNe(le)
	c.Extended = false
	return c.Bytes()
}
