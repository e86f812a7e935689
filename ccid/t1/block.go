package t1

import "fmt"

// Sizes and defaults.
const (
	// MaxINF is the largest information field of one block: IFSC and IFSD
	// range over 1..254 (0x00 and 0xFF are reserved).
	MaxINF = 254
	// DefaultIFSC is the card's IFSC when its ATR has no TA for T=1.
	DefaultIFSC = 32
	// DefaultIFSD is the largest information field the host accepts unless
	// Config says otherwise.
	DefaultIFSD = 254
	// DefaultMaxRetries is how many invalid blocks in a row the host answers
	// with R-blocks before it resynchronises.
	DefaultMaxRetries = 3
	// MaxAPDU is the longest command Transmit accepts: an extended case 4
	// APDU (4 header bytes, 3 Lc bytes, 65535 data bytes, 3 Le bytes).
	MaxAPDU = 4 + 3 + 65535 + 3
	// MaxResponse is the longest response Transmit accepts: 65536 data
	// bytes and SW1 SW2.
	MaxResponse = 65536 + 2

	// initialIFS is IFSC and IFSD before anything is negotiated
	// (ISO/IEC 7816-3 §11.4.2); it is also the card's idea of IFSD after
	// S(RESYNCH).
	initialIFS = 32
	// resyncAttempts is how often the host sends S(RESYNCH request) before
	// giving up (ISO/IEC 7816-3 rule 6.4).
	resyncAttempts = 3
	// maxIdle bounds the blocks a card may send without moving any data
	// (S-block requests, empty chained I-blocks) within one Transmit.
	maxIdle = 1024
	// maxBlock is the longest block: prologue, MaxINF and a CRC.
	maxBlock = 3 + MaxINF + 2
)

// PCB bits.
const (
	pcbR      = 0x80 // R-block (with bit 7 clear)
	pcbS      = 0xC0 // S-block
	kindMask  = 0xC0
	iSeq      = 0x40 // N(S) of an I-block
	iMore     = 0x20 // M: more blocks follow
	iReserved = 0x1F
	rSeq      = 0x10 // N(R) of an R-block
	rReserved = 0x20
	rErrMask  = 0x0F
	rEDCError = 0x01 // R-block: EDC or parity error
	rOther    = 0x02 // R-block: other error
	sResponse = 0x20
	sTypeMask = 0x1F
	sResynch  = 0x00
	sIFS      = 0x01
	sAbort    = 0x02
	sWTX      = 0x03
)

type blockKind uint8

const (
	kindI blockKind = iota
	kindR
	kindS
)

// block is a parsed block; inf aliases the bytes it was parsed from.
type block struct {
	nad, pcb byte
	inf      []byte
}

func kindOf(pcb byte) blockKind {
	switch {
	case pcb&0x80 == 0:
		return kindI
	case pcb&kindMask == pcbR:
		return kindR
	default:
		return kindS
	}
}

func (b block) kind() blockKind { return kindOf(b.pcb) }

// seq is N(S) of an I-block or N(R) of an R-block, as 0 or 1.
func (b block) seq() byte {
	if b.kind() == kindR {
		return b.pcb >> 4 & 1
	}
	return b.pcb >> 6 & 1
}

func (b block) more() bool { return b.pcb&iMore != 0 }

func (b block) String() string { return describePCB(b.pcb) }

// describePCB names a block the way ISO/IEC 7816-3 writes it, for errors
// and logs: I(0,1), R(1) EDC error, S(WTX request).
func describePCB(pcb byte) string {
	switch kindOf(pcb) {
	case kindI:
		m := 0
		if pcb&iMore != 0 {
			m = 1
		}
		return fmt.Sprintf("I(%d,%d)", pcb>>6&1, m)
	case kindR:
		s := fmt.Sprintf("R(%d)", pcb>>4&1)
		switch pcb & rErrMask {
		case rEDCError:
			s += " EDC error"
		case rOther:
			s += " other error"
		}
		return s
	}
	names := [...]string{sResynch: "RESYNCH", sIFS: "IFS", sAbort: "ABORT", sWTX: "WTX"}
	name := fmt.Sprintf("0x%02X", pcb&sTypeMask)
	if t := int(pcb & sTypeMask); t < len(names) {
		name = names[t]
	}
	if pcb&sResponse != 0 {
		return "S(" + name + " response)"
	}
	return "S(" + name + " request)"
}

// swapNibbles turns a NAD around: the card answers with source and
// destination addresses exchanged.
func swapNibbles(b byte) byte { return b<<4 | b>>4 }

// appendBlock appends the block NAD PCB LEN INF EDC to dst. len(inf) must
// not exceed MaxINF.
func appendBlock(dst []byte, nad, pcb byte, inf []byte, crc bool) []byte {
	start := len(dst)
	dst = append(dst, nad, pcb, byte(len(inf)))
	dst = append(dst, inf...)
	return appendEDC(dst, dst[start:], crc)
}

func appendEDC(dst, covered []byte, crc bool) []byte {
	if crc {
		v := CRC(covered)
		return append(dst, byte(v>>8), byte(v))
	}
	return append(dst, LRC(covered))
}

func edcLen(crc bool) int {
	if crc {
		return 2
	}
	return 1
}

// parseBlock checks b as one whole block and returns it. maxINF is the
// largest LEN the receiver accepts (its IFS). Errors are *BlockError.
func parseBlock(b []byte, crc bool, maxINF int) (block, error) {
	n := edcLen(crc)
	if len(b) < 3+n {
		return block{}, blockErrorf(false, "%d-byte block is shorter than a prologue and EDC", len(b))
	}
	ln := int(b[2])
	if ln == 0xFF {
		return block{}, blockErrorf(false, "LEN 0xFF is reserved")
	}
	if len(b) != 3+ln+n {
		return block{}, blockErrorf(false, "LEN %d does not match a %d-byte block", ln, len(b))
	}
	body, edc := b[:3+ln], b[3+ln:]
	if crc {
		if v := CRC(body); edc[0] != byte(v>>8) || edc[1] != byte(v) {
			return block{}, blockErrorf(true, "CRC %02X%02X, computed %04X", edc[0], edc[1], v)
		}
	} else if v := LRC(body); edc[0] != v {
		return block{}, blockErrorf(true, "LRC %02X, computed %02X", edc[0], v)
	}
	blk := block{nad: b[0], pcb: b[1], inf: b[3 : 3+ln]}
	if ln > maxINF {
		return block{}, blockErrorf(false, "%v with LEN %d above the IFS %d", blk, ln, maxINF)
	}
	switch blk.kind() {
	case kindI:
		if blk.pcb&iReserved != 0 {
			return block{}, blockErrorf(false, "I-block PCB %02X has reserved bits set", blk.pcb)
		}
	case kindR:
		if blk.pcb&rReserved != 0 || blk.pcb&rErrMask > rOther {
			return block{}, blockErrorf(false, "R-block PCB %02X has reserved bits set", blk.pcb)
		}
		if ln != 0 {
			return block{}, blockErrorf(false, "%v with LEN %d", blk, ln)
		}
	case kindS:
		want := 0
		switch blk.pcb & sTypeMask {
		case sResynch, sAbort:
		case sIFS, sWTX:
			want = 1
		default:
			return block{}, blockErrorf(false, "S-block PCB %02X has an unknown type", blk.pcb)
		}
		if ln != want {
			return block{}, blockErrorf(false, "%v with LEN %d", blk, ln)
		}
		if blk.pcb&sTypeMask == sIFS && (blk.inf[0] == 0 || blk.inf[0] == 0xFF) {
			return block{}, blockErrorf(false, "%v with reserved IFS 0x%02X", blk, blk.inf[0])
		}
	}
	return blk, nil
}

// LRC returns the longitudinal redundancy check of p: all bytes XORed.
func LRC(p []byte) byte {
	var v byte
	for _, b := range p {
		v ^= b
	}
	return v
}

// CRC returns the T=1 CRC of p as libccid computes it (src/openct/checksum.c,
// "ISO STD 3309"): CRC-16 with the reflected CCITT polynomial 0x8408,
// initial value 0xFFFF and no final XOR (the catalogue's CRC-16/MCRF4XX;
// "123456789" gives 0x6F91). The block carries the high byte first.
func CRC(p []byte) uint16 {
	v := uint16(0xFFFF)
	for _, b := range p {
		v = v>>8 ^ crcTable[byte(v)^b]
	}
	return v
}

var crcTable = func() (t [256]uint16) {
	for i := range t {
		v := uint16(i)
		for range 8 {
			if v&1 != 0 {
				v = v>>1 ^ 0x8408
			} else {
				v >>= 1
			}
		}
		t[i] = v
	}
	return t
}()
