package card

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
)

// usimAIDPrefix is RID + application code of a 3GPP USIM (TS 31.110).
var usimAIDPrefix = []byte{0xa0, 0x00, 0x00, 0x00, 0x87, 0x10, 0x02}

// ErrBadIMSI is wrapped by errors about the contents of EF.IMSI.
var ErrBadIMSI = errors.New("invalid EF.IMSI contents")

// maxDIRRecords bounds the EF.DIR records identifyIMSI reads looking for
// a USIM: it is normally the first.
const maxDIRRecords = 4

// identifyIMSI is Identify's IMSI step, built to cost few APDUs (each
// file is reached by its short file identifier, and nothing asks for
// response data it does not use). The current DF must be the MF, as
// pySim's ICCID steps leave it:
//
//  1. READ RECORD n of EF.DIR by its SFI 1E (00 B2 n F4 00), n = 1, 2, ...
//     until a record names an application whose AID starts with the USIM
//     prefix a0000000871002, the card answers an error (6A83 after the
//     last record), or maxDIRRecords. A card without EF.DIR (6A82 to the
//     first) is asked for the USIM by that prefix instead (partial AID).
//  2. SELECT ADF.USIM by its AID without response data (00 A4 04 0C).
//  3. READ BINARY of EF.IMSI by its SFI 07 (00 B0 87 00 09).
//
// A status word other than 9000 at any step (notably 6982, security
// status not satisfied: the IMSI wants a PIN) means no IMSI, with a nil
// error; so does EF.IMSI contents DecodeIMSI refuses. Only a failure to
// talk to the card is an error. On T=0 each READ may take a second APDU
// (61xx or 6Cxx, followed as pySim's server does).
func identifyIMSI(ctx context.Context, t Transmitter) (string, error) {
	var aid []byte
	for n := 1; n <= maxDIRRecords && aid == nil; n++ {
		rec, err := serverXceiveOK(ctx, t, []byte{0x00, 0xb2, byte(n), 0x1e<<3 | 0x04, 0x00})
		if err != nil {
			if stepErr(err) != nil {
				return "", stepErr(err)
			}
			if n == 1 && refusedWith(err, 0x6a82) { // no EF.DIR
				aid = usimAIDPrefix
			}
			break
		}
		if a := dirAID(rec); bytes.HasPrefix(a, usimAIDPrefix) {
			aid = a
		}
	}
	if aid == nil {
		return "", nil
	}
	sel := Command{CLA: 0x00, INS: 0xa4, P1: 0x04, P2: 0x0c, Data: aid}.Bytes()
	if _, err := serverXceiveOK(ctx, t, sel); err != nil {
		return "", stepErr(err)
	}
	data, err := serverXceiveOK(ctx, t, []byte{0x00, 0xb0, 0x80 | 0x07, 0x00, 0x09})
	if err != nil {
		return "", stepErr(err)
	}
	imsi, err := DecodeIMSI(data)
	if err != nil {
		return "", nil // unreadable contents: no IMSI, as for a refusal
	}
	return imsi, nil
}

// ReadIMSI reads the IMSI with a fuller search than Identify's (for
// cards that refuse the short forms identification uses). It selects the MF, looks
// for a USIM AID (prefix a0000000871002) in EF.DIR and selects it, falls
// back to selecting by that AID prefix, and then to DF.GSM 7F20; then
// reads EF.IMSI 6F07. All APDUs go through TransmitFollow.
//
// A card without USIM or GSM application yields an error matching
// ErrFileNotFound. The card's selection state is changed.
func ReadIMSI(ctx context.Context, t Transmitter) (string, error) {
	if _, err := sendOK(ctx, t, selectFID(0x3f00)); err != nil {
		return "", fmt.Errorf("selecting MF: %w", err)
	}
	found, err := selectUSIM(ctx, t)
	if err != nil {
		return "", err
	}
	if !found {
		if _, err := sendOK(ctx, t, selectFID(0x7f20)); err != nil {
			return "", fmt.Errorf("selecting DF.GSM after finding no USIM: %w", err)
		}
	}
	if _, err := sendOK(ctx, t, selectFID(0x6f07)); err != nil {
		return "", fmt.Errorf("selecting EF.IMSI: %w", err)
	}
	data, err := sendOK(ctx, t, []byte{0x00, 0xb0, 0x00, 0x00, 0x09})
	if err != nil {
		return "", fmt.Errorf("reading EF.IMSI: %w", err)
	}
	return DecodeIMSI(data)
}

// selectUSIM selects ADF.USIM; found is false (with nil error) when the
// card has none.
func selectUSIM(ctx context.Context, t Transmitter) (found bool, err error) {
	aids, err := readDIR(ctx, t)
	if err != nil {
		return false, err
	}
	for _, aid := range append(aids, usimAIDPrefix) {
		if !bytes.HasPrefix(aid, usimAIDPrefix) {
			continue
		}
		_, err := sendOK(ctx, t, Command{CLA: 0x00, INS: 0xa4, P1: 0x04, P2: 0x04, Data: aid, Ne: 256}.Bytes())
		switch {
		case err == nil:
			return true, nil
		case !isStatus(err):
			return false, fmt.Errorf("selecting ADF.USIM %x: %w", aid, err)
		}
	}
	return false, nil
}

// readDIR returns the application AIDs listed in EF.DIR, or none if the
// card has no EF.DIR.
func readDIR(ctx context.Context, t Transmitter) ([][]byte, error) {
	if _, err := sendOK(ctx, t, selectFID(0x2f00)); err != nil {
		if isStatus(err) { // no readable EF.DIR: fall back to the AID prefix
			return nil, nil
		}
		return nil, fmt.Errorf("selecting EF.DIR: %w", err)
	}
	var aids [][]byte
	for rec := 1; rec <= 254; rec++ {
		data, err := sendOK(ctx, t, []byte{0x00, 0xb2, byte(rec), 0x04, 0x00})
		if isStatus(err) { // 6A83 after the last record, or unreadable
			break
		}
		if err != nil {
			return nil, fmt.Errorf("reading EF.DIR record %d: %w", rec, err)
		}
		if aid := dirAID(data); aid != nil {
			aids = append(aids, aid)
		}
	}
	return aids, nil
}

// dirAID extracts the AID (tag 4F) of an application template (tag 61)
// record of EF.DIR; nil if the record is empty or malformed.
func dirAID(rec []byte) []byte {
	if len(rec) < 2 || rec[0] != 0x61 || int(rec[1]) > len(rec)-2 {
		return nil
	}
	body := rec[2 : 2+int(rec[1])]
	for len(body) >= 2 {
		tag, n := body[0], int(body[1])
		if n > len(body)-2 {
			return nil
		}
		if tag == 0x4f {
			return append([]byte(nil), body[2:2+n]...)
		}
		body = body[2+n:]
	}
	return nil
}

// sendOK sends cmd through TransmitFollow and turns its status word
// into an error.
func sendOK(ctx context.Context, t Transmitter, cmd []byte) ([]byte, error) {
	r, err := TransmitFollow(ctx, t, cmd)
	if err != nil {
		return nil, err
	}
	return ResponseError(r)
}

// isStatus tells a card's refusal (a status word) from a transport error.
func isStatus(err error) bool {
	var se *StatusError
	var ve *VerifyRetriesError
	return errors.As(err, &se) || errors.As(err, &ve)
}

func selectFID(fid uint16) []byte {
	return []byte{0x00, 0xa4, 0x00, 0x04, 0x02, byte(fid >> 8), byte(fid), 0x00}
}

// DecodeIMSI decodes EF.IMSI (3GPP TS 31.102 4.2.2): a length byte, then
// BCD digits, the first one after a parity nibble, 'f' padded.
// 080910101032547698 decodes to 001010123456789.
func DecodeIMSI(b []byte) (string, error) {
	if len(b) < 2 {
		return "", fmt.Errorf("%w: %d bytes", ErrBadIMSI, len(b))
	}
	n := int(b[0])
	if n < 1 || n > 8 || n > len(b)-1 {
		return "", fmt.Errorf("%w: length byte %d with %d bytes following", ErrBadIMSI, n, len(b)-1)
	}
	var sb strings.Builder
	for i, x := range b[1 : 1+n] {
		nibs := []byte{x & 0xf, x >> 4}
		if i == 0 {
			nibs = nibs[1:] // the low nibble is the parity/type
		}
		for _, d := range nibs {
			switch {
			case d == 0xf:
				continue
			case d > 9:
				return "", fmt.Errorf("%w: nibble %x is not a digit", ErrBadIMSI, d)
			}
			sb.WriteByte('0' + d)
		}
	}
	if sb.Len() == 0 {
		return "", fmt.Errorf("%w: no digits", ErrBadIMSI)
	}
	return sb.String(), nil
}

// EncodeIMSI encodes an IMSI of 1 to 15 decimal digits for EF.IMSI,
// padded with ff to 9 bytes; the inverse of DecodeIMSI.
func EncodeIMSI(imsi string) ([]byte, error) {
	if len(imsi) == 0 || len(imsi) > 15 || strings.Trim(imsi, "0123456789") != "" {
		return nil, fmt.Errorf("%w: IMSI %q is not 1 to 15 decimal digits", ErrBadIMSI, imsi)
	}
	digits := "1" + imsi // parity nibble: 1 = even number of digits, IMSI
	if len(imsi)%2 == 1 {
		digits = "9" + imsi
	} else {
		digits += "f"
	}
	out := []byte{byte(len(digits) / 2)}
	for i := 0; i < len(digits); i += 2 {
		out = append(out, hexNibble(digits[i+1])<<4|hexNibble(digits[i]))
	}
	for len(out) < 9 {
		out = append(out, 0xff)
	}
	return out, nil
}

func hexNibble(c byte) byte {
	if c >= '0' && c <= '9' {
		return c - '0'
	}
	return 0xf
}
