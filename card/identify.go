package card

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// Identity is what identifies a card to users: the EID of an eUICC, the
// ICCID, and (when read by the agent) the IMSI. Empty means not found.
// Values are lower-case hex/decimal digits as pySim reports them.
type Identity struct {
	EID, ICCID, IMSI string
}

// The APDUs of pySim's server identification (contrib/wsrc_server.py at
// 671b0f1, CardClient.get_eid_sgp22 and get_iccid), in the order sent.
var (
	apduSelectISDR = mustHex("00a4040410a0000005591010ffffffff8900000100")
	apduGetEID     = mustHex("80e2910006bf3e035c015a")
	apduSelectMF   = mustHex("00a40000023f00")
	apduSelectICC  = mustHex("00a40000022fe2")
	apduReadICCID  = mustHex("00b0000000")
)

// ISDRAlternatives are the ISD-R AIDs of removable eUICCs that do not use
// the SGP.22 one, in the order Identify tries them: 5ber, eSIM.me v2 and
// XeSIM (the AIDs that EasyLPAC offers for lpac's LPAC_CUSTOM_ISD_R_AID;
// eSIM.me v2's is reported in EasyLPAC's issue 36).
var ISDRAlternatives = [][]byte{
	mustHex("a0000005591010ffffffff8900050500"), // 5ber
	mustHex("a0000005591010000000008900000300"), // eSIM.me v2
	mustHex("a0000005591010ffffffff8900000177"), // XeSIM
}

// Identify runs the identification sequence of pySim's WSRC server
// (CardClient.identify) over t, exactly and first, and then two
// extensions of ours:
//
//  1. SELECT ISD-R (00a4040410a0000005591010ffffffff8900000100); only if
//     that ends 9000, GET EID (80e2910006bf3e035c015a). EID = the last 32
//     hex digits of the GET EID response data.
//  2. SELECT MF (00a40000023f00), SELECT EF.ICCID (00a40000022fe2), READ
//     BINARY (00b0000000). ICCID = DecodeICCID of the data.
//  3. Only when step 2 found an ICCID (the card has a UICC file system):
//     the IMSI, where the card gives it without a PIN (see identifyIMSI:
//     EF.DIR → ADF.USIM → EF.IMSI, 2 to 5 APDUs).
//  4. Only when step 1's SELECT ISD-R was refused and step 2 found an
//     ICCID: SELECT of each of ISDRAlternatives in turn (as step 1 does),
//     and GET EID from the first one that answers 9000.
//
// Steps 1 and 2 send pySim's APDUs unchanged and in pySim's order, so a
// card identified by pySim's server and by ours sees the same first
// APDUs; the extensions come after them (step 4 after step 3: selecting
// an application by AID may hide the UICC file system from the APDUs
// that follow). A card with neither ISD-R nor MF sees pySim's sequence
// only.
//
// Each APDU gets pySim's server-side response handling: while SW1 is
// 61, 9F, 62 or 63, GET RESPONSE <CLA> C0 00 00 <SW2> and append its
// data; then, if SW1 is 6C, re-send CLA INS P1 P2 of the last command
// with Le=SW2 and take that answer instead. Every step must end 9000.
// Unlike pySim, the chains are bounded by MaxFollow.
//
// A step that fails on its status word (or never ends its 61xx chain)
// leaves its identity empty and identification goes on, as in pySim: a
// plain UICC yields only an ICCID (and an IMSI), and an EID failure does
// not stop the ICCID steps. A card that wants a PIN for EF.IMSI has no
// IMSI; that is not a failure. pySim stores an empty EID or ICCID when the
// card answers 9000 with no data; here empty means absent.
//
// The returned error is non-nil only when talking to the card failed
// (t.Transmit returned an error, ctx ended, or a response had no status
// word); the Identity then holds what was found before the failure.
func Identify(ctx context.Context, t Transmitter) (Identity, error) {
	var id Identity
	eid, isdr, err := identifyEID(ctx, t, apduSelectISDR)
	if err != nil {
		return id, fmt.Errorf("reading EID: %w", err)
	}
	id.EID = eid
	iccid, err := identifyICCID(ctx, t)
	if err != nil {
		return id, fmt.Errorf("reading ICCID: %w", err)
	}
	id.ICCID = iccid
	if id.ICCID == "" {
		return id, nil
	}
	if id.IMSI, err = identifyIMSI(ctx, t); err != nil {
		return id, fmt.Errorf("reading IMSI: %w", err)
	}
	if isdr {
		return id, nil
	}
	for _, aid := range ISDRAlternatives {
		sel := Command{CLA: 0x00, INS: 0xa4, P1: 0x04, P2: 0x04, Data: aid, Ne: 256}.Bytes()
		eid, found, err := identifyEID(ctx, t, sel)
		if err != nil {
			return id, fmt.Errorf("reading EID at ISD-R %x: %w", aid, err)
		}
		if found {
			id.EID = eid
			break
		}
	}
	return id, nil
}

// errStep marks a step that failed on the card's status word; it never
// leaves this file.
var errStep = errors.New("status word is not 9000")

// stepSWError is errStep with the status word.
type stepSWError struct{ sw uint16 }

func (e *stepSWError) Error() string { return fmt.Sprintf("%v: %04x", errStep, e.sw) }
func (e *stepSWError) Unwrap() error { return errStep }

// refusedWith reports whether err is a step's failure on status word sw.
func refusedWith(err error, sw uint16) bool {
	var se *stepSWError
	return errors.As(err, &se) && se.sw == sw
}

// identifyEID selects the ISD-R with selectISDR and reads the EID; found
// reports whether the ISD-R answered the SELECT with 9000.
func identifyEID(ctx context.Context, t Transmitter, selectISDR []byte) (eid string, found bool, err error) {
	if _, err := serverXceiveOK(ctx, t, selectISDR); err != nil {
		return "", false, stepErr(err)
	}
	data, err := serverXceiveOK(ctx, t, apduGetEID)
	if err != nil {
		return "", true, stepErr(err)
	}
	h := hex.EncodeToString(data)
	if len(h) > 32 {
		h = h[len(h)-32:]
	}
	return h, true, nil
}

func identifyICCID(ctx context.Context, t Transmitter) (string, error) {
	for _, c := range [][]byte{apduSelectMF, apduSelectICC} {
		if _, err := serverXceiveOK(ctx, t, c); err != nil {
			return "", stepErr(err)
		}
	}
	data, err := serverXceiveOK(ctx, t, apduReadICCID)
	if err != nil {
		return "", stepErr(err)
	}
	return DecodeICCID(data), nil
}

// stepErr turns a status-word failure into "not found" (nil error) and
// keeps transport failures.
func stepErr(err error) error {
	if errors.Is(err, errStep) || errors.Is(err, ErrFollowLimit) {
		return nil
	}
	return err
}

// serverXceiveOK is pySim's CardClient.xceive_apdu_checksw(pdu, "9000").
func serverXceiveOK(ctx context.Context, t Transmitter, cmd []byte) ([]byte, error) {
	data, sw, err := serverXceive(ctx, t, cmd)
	if err != nil {
		return nil, err
	}
	if sw != 0x9000 {
		return nil, &stepSWError{sw}
	}
	return data, nil
}

// serverXceive is pySim's CardClient.xceive_apdu: the server-side
// GET RESPONSE / wrong-Le handling, bounded.
func serverXceive(ctx context.Context, t Transmitter, cmd []byte) ([]byte, uint16, error) {
	data, sw, err := transmitSplit(ctx, t, cmd)
	if err != nil {
		return nil, 0, err
	}
	prev := cmd
	for n := 1; ; n++ {
		switch byte(sw >> 8) {
		case 0x9f, 0x61, 0x62, 0x63:
		default:
			if byte(sw>>8) == 0x6c {
				if n >= MaxFollow {
					return nil, 0, ErrFollowLimit
				}
				re := []byte{prev[0], prev[1], prev[2], prev[3], byte(sw)}
				return transmitSplit(ctx, t, re)
			}
			return data, sw, nil
		}
		if n >= MaxFollow {
			return nil, 0, ErrFollowLimit
		}
		prev = getResponse(cmd[0], byte(sw))
		var d []byte
		d, sw, err = transmitSplit(ctx, t, prev)
		if err != nil {
			return nil, 0, err
		}
		data = append(data, d...)
	}
}

func transmitSplit(ctx context.Context, t Transmitter, cmd []byte) ([]byte, uint16, error) {
	r, err := t.Transmit(ctx, cmd)
	if err != nil {
		return nil, 0, fmt.Errorf("sending %x: %w", cmd, err)
	}
	data, sw, err := SplitResponse(r)
	if err != nil {
		return nil, 0, fmt.Errorf("answer to %x: %w", cmd, err)
	}
	// Copy: the Transmitter may reuse its buffer.
	return append([]byte(nil), data...), sw, nil
}

// DecodeICCID decodes the contents of EF.ICCID the way pySim's dec_iccid
// does: swap the nibbles of each byte and strip 'f' padding from both
// ends of the resulting lower-case hex string (an ICCID never starts
// with f, so in practice the trailing pad). 989444000000115513f4 decodes
// to 8949440000001155314.
func DecodeICCID(b []byte) string {
	h := []byte(hex.EncodeToString(b))
	for i := 0; i+1 < len(h); i += 2 {
		h[i], h[i+1] = h[i+1], h[i]
	}
	return NormalizeICCID(string(h))
}

// ErrBadICCID is wrapped by EncodeICCID's errors.
var ErrBadICCID = errors.New("invalid ICCID")

// EncodeICCID encodes an ICCID for EF.ICCID the way pySim's enc_iccid
// does: pad with 'f' to 20 digits and swap the nibbles of each byte, so
// 8949440000001155314 becomes 989444000000115513f4. The ICCID may hold
// hex digits (upper or lower case) and at most 20 of them.
func EncodeICCID(iccid string) ([]byte, error) {
	if len(iccid) == 0 || len(iccid) > 20 {
		return nil, fmt.Errorf("%w: %q has %d digits, want 1 to 20", ErrBadICCID, iccid, len(iccid))
	}
	s := []byte(strings.ToLower(iccid) + strings.Repeat("f", 20-len(iccid)))
	for i := 0; i < len(s); i += 2 {
		s[i], s[i+1] = s[i+1], s[i]
	}
	b, err := hex.DecodeString(string(s))
	if err != nil {
		return nil, fmt.Errorf("%w: %q is not hex digits", ErrBadICCID, iccid)
	}
	return b, nil
}

// NormalizeICCID returns s in the form DecodeICCID gives and ICCIDs are
// matched in: lower case, 'f' padding removed from both ends (as pySim's
// dec_iccid strips it). pySim-shell's --wsrc-iccid takes only an even
// number of digits, so a 19-digit ICCID arrives with its pad.
func NormalizeICCID(s string) string {
	return strings.Trim(strings.ToLower(s), "f")
}

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}
