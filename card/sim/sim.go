// Package sim is a simulated UICC: a deterministic card.Card that answers
// APDUs from an in-memory file tree, for tests, demos and the agent's
// simulated readers. Nothing about it is random or timed, and it is safe
// for concurrent use (one mutex around all state).
//
// Data flow: the agent (or a test) holds a *Card as its card.Card and
// calls Transmit; reader simulators (CCID, vpcd) call Process with the
// raw APDU bytes instead.
//
// The default card, New(Config{}), is the virtual eUICC that
// /work/shared/protocol/transcript.md was recorded with: every APDU in
// that recording gets exactly the recorded answer, including the
// "EF.DIR is empty" and "no USIM application" ones (the recorded eUICC
// has no enabled profile).
//
// File tree (FCPs as in the recording where it shows them):
//
//	MF 3F00
//	├── EF.DIR   2F00  linear fixed, 1 record of 38 bytes, SFI 1E; empty
//	│                  (all ff) unless Config.USIM, then it names ADF.USIM
//	├── EF.ICCID 2FE2  transparent, 10 bytes, SFI 02: the ICCID, BCD
//	├── EF.ARR   2F06  linear fixed, 4 records of 48 bytes, SFI 06
//	└── EF 6F99        transparent, 4000 bytes (byte i = i mod 251),
//	                   the only writable file, for extended-length tests
//	ADF.USIM (only with Config.USIM) AID a0000000871002ffffffff8907090000
//	├── EF.IMSI  6F07  transparent, 9 bytes, SFI 07
//	└── EF.AD    6FAD  transparent, 4 bytes, SFI 03
//	ISD-R (unless Config.EID is "-") AID a0000005591010ffffffff8900000100
//	      answers STORE DATA GET EID (80 E2 91 00 06 BF3E035C015A) with
//	      BF3E 12 5A 10 <EID>; any other STORE DATA → 6A80
//
// Commands: SELECT (A4) by FID (P1=00; 3F00, 7FFF = the ADF last
// selected by AID, children, parent and siblings of the current DF),
// parent (P1=03), AID (P1=04, partial AID matches a prefix), path from
// the MF (P1=08) or the current DF (P1=09), with P2=00/04 (FCP; FCI for
// the ISD-R) or 0C (no data); READ BINARY (B0, offset or SFI), UPDATE
// BINARY (D6), READ RECORD (B2, absolute, next, previous, SFI), STATUS
// (80 F2), STORE DATA (80 E2, ISD-R selected), GET RESPONSE (C0, any
// class). Short and extended APDUs are accepted. Errors: 6700 malformed
// or wrong length, 6A82 unknown file or AID, 6A83 record not found, 6A86
// bad P1/P2, 6B00 offset outside the EF, 6981 wrong file structure, 6982
// write to a read-only EF, 6985 GET RESPONSE with nothing pending, 6986
// no EF selected, 6D00 unknown INS, 6E00 unknown CLA, 6881/6882 logical
// channel/secure messaging.
//
// Response delivery: by default data comes back with the command,
// even for case 1 and 3 commands (as the recorded card did), cut at Ne
// with 61xx for the rest. With Config.T0GetResponse a short command
// behaves as on T=0: a case 1/3/4 command that produces data answers
// 61xx and the data must be fetched with GET RESPONSE; a case 2 command
// whose Le does not match the data available answers 6Cxx.
package sim

import (
	"context"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"

	"github.com/wsrc-go/wsrc/card"
)

// Protocol is the transmission protocol the simulated ATR announces.
type Protocol int

const (
	// T0 is the character protocol T=0.
	T0 Protocol = iota
	// T1 is the block protocol T=1.
	T1
)

func (p Protocol) String() string {
	switch p {
	case T0:
		return "T=0"
	case T1:
		return "T=1"
	}
	return fmt.Sprintf("Protocol(%d)", int(p))
}

// Defaults used for zero Config fields.
const (
	DefaultICCID = "8949440000001155314"
	DefaultEID   = "89049032123451234512345678901235"
	DefaultIMSI  = "001010123456789"
	// NoEID as Config.EID makes a plain UICC without ISD-R.
	NoEID = "-"
)

var (
	// ATRT0 is the default ATR for T0: the recorded virtual card's
	// (T=0, historical bytes ending "WSRCVSIM").
	ATRT0 = mustHex("3b9f96801fc78031e073fe211b575352435653494da3")
	// ATRT1 is the default ATR for T1: TA1=96, T=1 with IFSC 254,
	// BWI 4, CWI 5, the same historical bytes, and TCK.
	ATRT1 = withTCK(mustHex("3b9f968131fe458031e073fe211b575352435653494d"))
)

// withTCK appends the check byte: the XOR of T0 .. the last historical byte.
func withTCK(atr []byte) []byte {
	var x byte
	for _, b := range atr[1:] {
		x ^= b
	}
	return append(atr, x)
}

// Config describes a simulated card. The zero Config is the recorded
// virtual eUICC.
type Config struct {
	// ICCID is up to 20 hex digits, default DefaultICCID.
	ICCID string
	// EID is 32 hex digits, default DefaultEID; NoEID ("-") makes a plain
	// UICC whose SELECT ISD-R answers 6A82.
	EID string
	// IMSI is 1 to 15 decimal digits, default DefaultIMSI. It is only on the
	// card with USIM.
	IMSI string
	// USIM adds ADF.USIM (with EF.IMSI) and its EF.DIR record. The
	// recorded card has none, so it is off by default.
	USIM bool
	// IMSINeedsPIN makes EF.IMSI unreadable (READ BINARY answers 6982,
	// security status not satisfied), as on cards that protect it with
	// PIN1; the simulated card never verifies a PIN.
	IMSINeedsPIN bool
	// ISDRAID is the AID the ISD-R answers to (unless EID is NoEID);
	// default AIDISDR, the SGP.22 one. Some removable eUICCs use another
	// (card.ISDRAlternatives).
	ISDRAID []byte
	// ATR defaults by Protocol: ATRT0 or ATRT1.
	ATR []byte
	// Protocol selects the default ATR.
	Protocol Protocol
	// T0GetResponse makes short commands behave as on T=0: outgoing
	// data of case 1/3/4 commands is announced with 61xx and fetched
	// with GET RESPONSE; a case 2 command with the wrong Le gets 6Cxx.
	T0GetResponse bool
}

func (c Config) withDefaults() Config {
	if c.ICCID == "" {
		c.ICCID = DefaultICCID
	}
	if c.EID == "" {
		c.EID = DefaultEID
	}
	if c.IMSI == "" {
		c.IMSI = DefaultIMSI
	}
	if c.ATR == nil {
		c.ATR = ATRT0
		if c.Protocol == T1 {
			c.ATR = ATRT1
		}
	}
	c.ATR = append([]byte(nil), c.ATR...)
	if c.ISDRAID == nil {
		c.ISDRAID = AIDISDR
	}
	c.ISDRAID = append([]byte(nil), c.ISDRAID...)
	c.ICCID = strings.ToLower(c.ICCID)
	if c.EID != NoEID {
		c.EID = strings.ToLower(c.EID)
	}
	return c
}

// Validate reports whether New accepts c (after defaults are applied).
func (c Config) Validate() error {
	c = c.withDefaults()
	if _, err := card.EncodeICCID(c.ICCID); err != nil {
		return fmt.Errorf("sim config: %w", err)
	}
	if c.EID != NoEID {
		if len(c.EID) != 32 || !isHex(c.EID) {
			return fmt.Errorf("sim config: EID %q is not 32 hex digits", c.EID)
		}
	}
	if _, err := card.EncodeIMSI(c.IMSI); err != nil {
		return fmt.Errorf("sim config: %w", err)
	}
	if len(c.ISDRAID) < 5 || len(c.ISDRAID) > 16 {
		return fmt.Errorf("sim config: ISD-R AID of %d bytes, want 5 to 16", len(c.ISDRAID))
	}
	if len(c.ATR) < 2 || len(c.ATR) > 33 {
		return fmt.Errorf("sim config: ATR of %d bytes, want 2 to 33", len(c.ATR))
	}
	if c.Protocol != T0 && c.Protocol != T1 {
		return fmt.Errorf("sim config: unknown protocol %d", int(c.Protocol))
	}
	return nil
}

func isHex(s string) bool {
	_, err := hex.DecodeString(s)
	return err == nil
}

// Card is a simulated UICC. It implements card.Card.
type Card struct {
	cfg  Config // immutable after New
	atr  []byte // immutable after New
	mf   *file  // tree shape immutable; writable EF data guarded by mu
	adf  *file  // ADF.USIM or nil; immutable
	isdr bool   // has an ISD-R; immutable
	// isdrAID and isdrFCI are the ISD-R's AID and answer to SELECT;
	// immutable.
	isdrAID, isdrFCI []byte

	mu sync.Mutex
	// guarded by mu
	closed  bool
	curDF   *file // current DF or ADF, never nil
	curEF   *file // current EF or nil
	app     bool  // the ISD-R is the selected application
	lastADF *file // the ADF last selected by AID (what 7FFF names), or nil
	recPtr  int   // current record of curEF (0 = none)
	pending []byte
}

var _ card.Card = (*Card)(nil)

// New returns a powered simulated card. It panics if cfg.Validate fails:
// callers taking a Config from users call Validate first.
func New(cfg Config) *Card {
	if err := cfg.Validate(); err != nil {
		panic(err)
	}
	cfg = cfg.withDefaults()
	c := &Card{cfg: cfg, atr: cfg.ATR, isdr: cfg.EID != NoEID, isdrAID: cfg.ISDRAID, isdrFCI: isdrFCIFor(cfg.ISDRAID)}
	c.mf, c.adf = buildTree(cfg)
	c.resetState()
	return c
}

// Identity returns what identification should find on this card: EID
// (empty for a plain UICC), ICCID as NormalizeICCID gives it, and the
// IMSI when the card has a USIM whose EF.IMSI is readable without a PIN.
func (c *Card) Identity() card.Identity {
	id := card.Identity{ICCID: card.NormalizeICCID(c.cfg.ICCID)}
	if c.isdr {
		id.EID = c.cfg.EID
	}
	if c.cfg.USIM && !c.cfg.IMSINeedsPIN {
		id.IMSI = c.cfg.IMSI
	}
	return id
}

// ATR returns the card's answer-to-reset.
func (c *Card) ATR() []byte { return append([]byte(nil), c.atr...) }

// Transmit processes one command APDU. It fails only when ctx is done or
// the card is closed.
func (c *Card) Transmit(ctx context.Context, command []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("transmitting to simulated card: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, fmt.Errorf("transmitting to simulated card: %w", card.ErrClosed)
	}
	return c.process(command), nil
}

// Reset returns the ATR and resets selection state (MF selected, no
// pending response). File contents survive, as on a real card.
func (c *Card) Reset(ctx context.Context, kind card.ResetKind) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%s reset of simulated card: %w", kind, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, fmt.Errorf("%s reset of simulated card: %w", kind, card.ErrClosed)
	}
	c.resetState()
	return c.ATR(), nil
}

// Close marks the card closed: Transmit and Reset then fail with
// card.ErrClosed. Process keeps working. Close is idempotent.
func (c *Card) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	return nil
}

// Process is the pure APDU processor: one command APDU in, the response
// APDU (data and SW1 SW2) out. It never fails; malformed input gets a
// status word. It ignores Close, so reader simulators can own the card's
// power state themselves.
func (c *Card) Process(cmd []byte) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.process(cmd)
}

func (c *Card) resetState() {
	c.curDF, c.curEF, c.app, c.lastADF, c.recPtr, c.pending = c.mf, nil, false, nil, 0, nil
}
