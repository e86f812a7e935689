// Package atr parses a smart card's answer-to-reset (ISO/IEC 7816-3
// clause 8) and holds the tables that turn its interface bytes into
// transmission parameters: the clock rate conversion integer Fi with its
// maximum clock fmax, the baud rate adjustment integer Di, the extra
// guard time, the T=0 waiting integer, and the T=1 IFSC, BWI, CWI and
// error detection code.
//
// Data flow: the CCID driver (package ccid) parses the ATR a reader
// returns on IccPowerOn to choose the protocol, negotiate the speed (PPS)
// and compute command timeouts; the agent and the CLI use it to describe
// a card. Parsing is pure and never panics on any input.
package atr

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// Errors wrapped by Parse.
var (
	// ErrMalformed: the bytes are not an ATR (bad TS, truncated, extra
	// bytes after the historical bytes and TCK).
	ErrMalformed = errors.New("malformed ATR")
	// ErrTCK: the check byte does not match. Parse still returns the
	// parsed ATR with this error: cards with a wrong TCK exist and
	// readers pass their ATR on.
	ErrTCK = errors.New("ATR check byte TCK wrong")
)

// MaxLen is the longest ATR ISO/IEC 7816-3 allows: TS plus 32 bytes.
const MaxLen = 33

// Convention is the bit order and polarity announced by TS.
type Convention int

const (
	// Direct convention: TS = 3B.
	Direct Convention = iota
	// Inverse convention: TS = 3F.
	Inverse
)

func (c Convention) String() string {
	if c == Inverse {
		return "inverse"
	}
	return "direct"
}

// Group is one group of interface bytes: TAi, TBi, TCi and TDi for i =
// its position plus one. Protocol is the protocol its bytes qualify: -1
// for group 1 (global bytes), otherwise the T announced by the previous
// group's TD.
type Group struct {
	TA, TB, TC, TD             byte
	HasTA, HasTB, HasTC, HasTD bool
	Protocol                   int
}

// ATR is a parsed answer-to-reset.
type ATR struct {
	// Raw is the ATR as received (a copy).
	Raw        []byte
	Convention Convention
	// Groups holds the interface byte groups in order; Groups[0] is TA1
	// TB1 TC1 TD1. It has at least one element, possibly with no byte
	// present.
	Groups []Group
	// Historical holds the K historical bytes (aliases Raw).
	Historical []byte
	// TCK is the check byte, present when any protocol other than T=0 is
	// announced.
	TCK    byte
	HasTCK bool
}

// Parse parses an ATR. On a wrong check byte it returns the parsed ATR
// together with an error wrapping ErrTCK; every other error wraps
// ErrMalformed and comes with a nil ATR.
func Parse(b []byte) (*ATR, error) {
	if len(b) < 2 {
		return nil, fmt.Errorf("%w: %d bytes, at least TS and T0 are needed", ErrMalformed, len(b))
	}
	if len(b) > MaxLen {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrMalformed, len(b), MaxLen)
	}
	a := &ATR{Raw: append([]byte(nil), b...)}
	switch b[0] {
	case 0x3B:
		a.Convention = Direct
	case 0x3F:
		a.Convention = Inverse
	default:
		return nil, fmt.Errorf("%w: TS=%02X, want 3B or 3F", ErrMalformed, b[0])
	}
	raw := a.Raw
	k := int(raw[1] & 0x0F)
	y := raw[1] >> 4
	pos := 2
	needTCK := false
	proto := -1
	for {
		g := Group{Protocol: proto}
		for bit, dst := range []*byte{&g.TA, &g.TB, &g.TC, &g.TD} {
			if y&(1<<bit) == 0 {
				continue
			}
			if pos >= len(raw) {
				return nil, fmt.Errorf("%w: interface bytes of group %d cut short at byte %d",
					ErrMalformed, len(a.Groups)+1, pos)
			}
			*dst = raw[pos]
			pos++
		}
		g.HasTA, g.HasTB, g.HasTC, g.HasTD = y&1 != 0, y&2 != 0, y&4 != 0, y&8 != 0
		a.Groups = append(a.Groups, g)
		if !g.HasTD {
			break
		}
		proto = int(g.TD & 0x0F)
		if proto != 0 {
			needTCK = true
		}
		y = g.TD >> 4
	}
	if pos+k > len(raw) {
		return nil, fmt.Errorf("%w: %d historical bytes announced, %d left", ErrMalformed, k, len(raw)-pos)
	}
	a.Historical = raw[pos : pos+k : pos+k]
	pos += k
	switch rest := len(raw) - pos; {
	case needTCK && rest == 0:
		return nil, fmt.Errorf("%w: TCK missing (a protocol other than T=0 is announced)", ErrMalformed)
	case needTCK && rest == 1:
		a.TCK, a.HasTCK = raw[pos], true
	case !needTCK && rest == 0:
	default:
		return nil, fmt.Errorf("%w: %d bytes after the historical bytes", ErrMalformed, rest)
	}
	if a.HasTCK {
		var x byte
		for _, c := range raw[1:] {
			x ^= c
		}
		if x != 0 {
			return a, fmt.Errorf("%w: XOR of T0..TCK is %02X", ErrTCK, x)
		}
	}
	return a, nil
}

// MustParse parses a hex ATR and panics on any error; for tests and
// tables of known cards.
func MustParse(hexATR string) *ATR {
	b, err := hex.DecodeString(strings.ReplaceAll(hexATR, " ", ""))
	if err != nil {
		panic(err)
	}
	a, err := Parse(b)
	if err != nil {
		panic(err)
	}
	return a
}

func (a *ATR) group(i int) *Group {
	if i < len(a.Groups) {
		return &a.Groups[i]
	}
	return nil
}

// TA1 returns TA1 and whether it is present.
func (a *ATR) TA1() (byte, bool) {
	g := a.group(0)
	return g.TA, g.HasTA
}

// FiDi returns the Fi and Di indices of TA1 (default 1 and 1). ok is
// false when TA1 encodes an RFU value; FiDi then returns the defaults.
func (a *ATR) FiDi() (fi, di int, ok bool) {
	ta, has := a.TA1()
	if !has {
		return 1, 1, true
	}
	fi, di = int(ta>>4), int(ta&0x0F)
	if FiTable[fi] == 0 || DiTable[di] == 0 {
		return 1, 1, false
	}
	return fi, di, true
}

// ISOSpeed reports whether TA1, if present, encodes valid Fi and Di
// values. A card with RFU values is "non-ISO": the driver then falls
// back to default speed and long timeouts.
func (a *ATR) ISOSpeed() bool {
	_, _, ok := a.FiDi()
	return ok
}

// ExtraGuardTime returns N from TC1 (0 when absent). 255 means the
// minimum guard time (12 etu for T=0, 11 etu for T=1).
func (a *ATR) ExtraGuardTime() int {
	g := a.group(0)
	if g.HasTC {
		return int(g.TC)
	}
	return 0
}

// SpecificMode reports TA2: present means the card is in specific mode,
// running only protocol proto; implicit means it uses implicit (not TA1)
// transmission parameters; canChange that it can switch to negotiable
// mode (bit 8 = 0).
func (a *ATR) SpecificMode() (proto int, implicit, canChange, present bool) {
	g := a.group(1)
	if g == nil || !g.HasTA {
		return 0, false, false, false
	}
	return int(g.TA & 0x0F), g.TA&0x10 != 0, g.TA&0x80 == 0, true
}

// WI returns the T=0 waiting integer from TC2 (default 10; a TC2 of 0
// is RFU and also yields 10).
func (a *ATR) WI() int {
	g := a.group(1)
	if g != nil && g.HasTC && g.TC != 0 {
		return int(g.TC)
	}
	return 10
}

// Protocols returns the transmission protocols the card offers, in the
// order the TD bytes announce them, without T=15 and without repeats;
// [0] when no TD is present.
func (a *ATR) Protocols() []int {
	var ps []int
	for _, g := range a.Groups {
		if !g.HasTD {
			continue
		}
		t := int(g.TD & 0x0F)
		if t == 15 || contains(ps, t) {
			continue
		}
		ps = append(ps, t)
	}
	if len(ps) == 0 {
		return []int{0}
	}
	return ps
}

func contains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// DefaultProtocol is the protocol the card uses after the ATR without
// PPS: the first one offered (TD1), or T=0.
func (a *ATR) DefaultProtocol() int {
	return a.Protocols()[0]
}

// Offers reports whether the card offers protocol t.
func (a *ATR) Offers(t int) bool {
	return contains(a.Protocols(), t)
}

// specific returns the first group from group 3 on that qualifies
// protocol t and has the byte selected by has.
func (a *ATR) specific(t int, has func(*Group) bool) *Group {
	for i := 2; i < len(a.Groups); i++ {
		g := &a.Groups[i]
		if g.Protocol == t && has(g) {
			return g
		}
	}
	return nil
}

// IFSC returns the T=1 information field size of the card: the first TAi
// (i ≥ 3) for T=1, default 32. 255 is RFU and is read as 254.
func (a *ATR) IFSC() int {
	g := a.specific(1, func(g *Group) bool { return g.HasTA })
	if g == nil || g.TA == 0 {
		return 32
	}
	if g.TA == 0xFF {
		return 254
	}
	return int(g.TA)
}

// T1Waiting returns the T=1 waiting integers from the first TBi (i ≥ 3)
// for T=1: BWI (default 4) and CWI (default 13).
func (a *ATR) T1Waiting() (bwi, cwi int) {
	g := a.specific(1, func(g *Group) bool { return g.HasTB })
	if g == nil {
		return 4, 13
	}
	return int(g.TB >> 4), int(g.TB & 0x0F)
}

// T1TB returns the raw first TBi (i ≥ 3) for T=1 and whether it is
// present (for CCID SetParameters' bWaitingIntegersT1).
func (a *ATR) T1TB() (byte, bool) {
	g := a.specific(1, func(g *Group) bool { return g.HasTB })
	if g == nil {
		return 0, false
	}
	return g.TB, true
}

// CRC reports whether T=1 uses a CRC (first TCi, i ≥ 3, for T=1 with bit
// 1 set) rather than the default LRC.
func (a *ATR) CRC() bool {
	g := a.specific(1, func(g *Group) bool { return g.HasTC })
	return g != nil && g.TC&1 != 0
}

// Classes returns the operating conditions the card accepts from the
// first TAi (i ≥ 3) for T=15: bit 0 class A (5 V), bit 1 class B (3 V),
// bit 2 class C (1.8 V). ok is false when the ATR does not say.
func (a *ATR) Classes() (mask byte, ok bool) {
	g := a.specific(15, func(g *Group) bool { return g.HasTA })
	if g == nil {
		return 0, false
	}
	return g.TA & 0x3F, true
}

// String renders the ATR in hex with a short decoding, for logs.
func (a *ATR) String() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "%X (", a.Raw)
	fi, di, ok := a.FiDi()
	if ok {
		fmt.Fprintf(&sb, "Fi=%d Di=%d", FiTable[fi], DiTable[di])
	} else {
		sb.WriteString("non-ISO TA1")
	}
	for _, t := range a.Protocols() {
		fmt.Fprintf(&sb, " T=%d", t)
	}
	if p, _, _, ok := a.SpecificMode(); ok {
		fmt.Fprintf(&sb, " specific T=%d", p)
	}
	fmt.Fprintf(&sb, " %d historical bytes)", len(a.Historical))
	return sb.String()
}
