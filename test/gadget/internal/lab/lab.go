// Package lab is what the reader lab's guest programs and its test agree
// on: the reader profiles served as USB gadgets (each a real reader's
// descriptor and VID:PID from package ccidsim), the card behind each, the
// APDU script both hosts run, and the line formats on the VM console.
package lab

import (
	"context"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/card/sim"
	"github.com/wsrc-go/wsrc/ccid"
	"github.com/wsrc-go/wsrc/ccid/ccidsim"
)

// Profile is a reader of the lab: a ccidsim profile and the card its
// slots hold.
type Profile struct {
	// Name is the subtest name, e.g. "OMNIKEY3x21".
	Name   string
	Reader ccidsim.Profile
	// Protocol is the card's: T=1 cards run the block protocol on TPDU
	// readers (IFSC 32, so 256-byte responses chain).
	Protocol sim.Protocol
}

// ATRT1IFSC32 is sim.ATRT1 with TA3 (IFSC) 32 instead of 254: a 256-byte
// READ BINARY then needs T=1 chaining from the card, and the host's IFSD
// matters.
var ATRT1IFSC32 = withTCK(mustHex("3b9f968131204580" + "31e073fe211b575352435653494d"))

// Profiles are the readers of the lab, in test order.
var Profiles = []Profile{
	{"OMNIKEY3x21", ccidsim.OMNIKEY3x21, sim.T1},
	{"SCR3310", ccidsim.SCR3310, sim.T1},
	{"CT30", ccidsim.CT30, sim.T0},
	{"ACR38U", ccidsim.ACR38U, sim.T1},
	{"ACR39U", ccidsim.ACR39U, sim.T0},
	{"sysmoOCTSIM", ccidsim.OCTSIM, sim.T0},
	{"AU9560", ccidsim.AU9560, sim.T0},
	{"NoInterrupt", withID(ccidsim.NoInterrupt, 0x25DD, 0x1101), sim.T1},
	{"ShortAPDU", withID(ccidsim.ShortAPDU, 0x076B, 0x3021), sim.T0},
}

// withID gives a synthetic ccidsim profile the VID:PID of a real reader
// in libccid's list: pcscd (libudev hotplug) loads libccid only for the
// VID:PIDs in its Info.plist, whatever the interface class. Neither ID
// has a quirk in libccid or in our driver: 25DD:1101 is the Bit4id
// miniLector-s, 076B:3021 the OMNIKEY CardMan 3121, a short-APDU reader
// (shared/ccid/facts.md).
func withID(p ccidsim.Profile, vid, pid uint16) ccidsim.Profile {
	p.VendorID, p.ProductID = vid, pid
	return p
}

// Find returns the profile called name.
func Find(name string) (Profile, bool) {
	for _, p := range Profiles {
		if p.Name == name {
			return p, true
		}
	}
	return Profile{}, false
}

// CardConfig is the simulated card of profile p.
func (p Profile) CardConfig() sim.Config {
	if p.Protocol == sim.T1 {
		return sim.Config{Protocol: sim.T1, ATR: ATRT1IFSC32}
	}
	return sim.Config{T0GetResponse: true}
}

// CardConfigTA1 is CardConfig with the ATR's TA1 replaced by ta1 (and
// its TCK fixed): 11 makes a card that runs at the default rate, so the
// same reader can be timed at the default and at a negotiated speed.
func (p Profile) CardConfigTA1(ta1 byte) sim.Config {
	c := p.CardConfig()
	a := c.ATR
	if a == nil {
		a = sim.ATRT0
	}
	a = append([]byte(nil), a[:len(a)-1]...) // without TCK
	a[2] = ta1                               // TS, T0 (TA1 present), TA1
	c.ATR = withTCK(a)
	return c
}

// Extended reports whether the script's 4000-byte READ BINARY fits the
// exchange (an extended-APDU reader, or T=1 at TPDU level).
func (p Profile) Extended() bool {
	switch p.Reader.Descriptor.Features.ExchangeLevel() {
	case ccid.LevelExtendedAPDU:
		return true
	case ccid.LevelTPDU:
		return p.Protocol == sim.T1
	}
	return false
}

// Step is one step of the script: a name and its result as hex (or
// "error: ...").
type Step struct {
	Name, Result string
}

// Line is the console line of a step: "step NAME RESULT".
func (s Step) Line() string { return "step " + s.Name + " " + s.Result }

// ParseStep reads a Line.
func ParseStep(line string) (Step, bool) {
	rest, ok := strings.CutPrefix(line, "step ")
	if !ok {
		return Step{}, false
	}
	name, res, _ := strings.Cut(rest, " ")
	return Step{name, res}, true
}

// Script runs the lab's APDU script on c, the same for every host and
// for the expected results (a sim.Card in the test process): the
// server's identification, SELECT and READ BINARY up to 256 bytes,
// GET RESPONSE (61xx) and wrong-Le (6Cxx) paths, a 4000-byte extended
// READ BINARY when extended is set, a warm and a cold reset. Every APDU
// goes through card.TransmitFollow, as the server's users see it; a
// "raw-" step keeps the first response as the host returned it (a T=0
// host may or may not fetch 61xx itself).
func Script(ctx context.Context, c card.Card, extended bool) []Step {
	var out []Step
	add := func(name string, b []byte, err error) {
		if err != nil {
			out = append(out, Step{name, "error: " + strings.ReplaceAll(err.Error(), " ", "_")})
			return
		}
		out = append(out, Step{name, hex.EncodeToString(b)})
	}
	apdu := func(name, h string) {
		r, err := card.TransmitFollow(ctx, c, mustHex(h))
		add(name, r, err)
	}
	add("atr", c.ATR(), nil)
	id, err := card.Identify(ctx, c)
	add("identify", []byte(fmt.Sprintf("iccid=%s,eid=%s", id.ICCID, id.EID)), err)
	r, err := c.Transmit(ctx, mustHex("00a40004023f00"))
	add("raw-select-mf", r, err)
	apdu("select-mf", "00a40004023f00")
	apdu("select-iccid", "00a4000c022fe2")
	apdu("read-iccid", "00b000000a")
	apdu("read-iccid-6c", "00b0000000")
	apdu("select-big", "00a4000c026f99")
	apdu("read-128", "00b0000080")
	apdu("read-256", "00b0000000")
	apdu("read-at-3900", "00b00f3c64")
	if extended {
		apdu("read-4000", "00b00000000fa0")
	}
	a, err := c.Reset(ctx, card.WarmReset)
	add("warm-reset", a, err)
	apdu("after-warm", "00a40004022fe2")
	a, err = c.Reset(ctx, card.ColdReset)
	add("cold-reset", a, err)
	apdu("after-cold", "00b082000a")
	return out
}

// Record lines of the gadget: "rx TYPE SLOT SEQ P1P2P3 LEN DATA" for
// every message the host sent (DATA cut to RecordDataMax bytes).
const RecordDataMax = 48

// RecordLine formats one received message.
func RecordLine(m ccid.Message) string {
	d := m.Data
	more := ""
	if len(d) > RecordDataMax {
		d, more = d[:RecordDataMax], "+"
	}
	return fmt.Sprintf("rx %02x %d %d %02x%02x%02x %d %x%s", byte(m.Type), m.Slot, m.Seq, m.Param[0], m.Param[1], m.Param[2], len(m.Data), d, more)
}

// Rx is a parsed record line.
type Rx struct {
	Type      ccid.MessageType
	Slot, Seq int
	Param     string // the three parameter bytes as hex
	Len       int
	Data      string // hex, cut (ends in "+" when cut)
	Line      string
}

// ParseRecord reads an "rx" line.
func ParseRecord(line string) (Rx, bool) {
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "rx" {
		return Rx{}, false
	}
	var rx Rx
	var typ byte
	if _, err := fmt.Sscanf(f[1]+" "+f[2]+" "+f[3]+" "+f[5], "%x %d %d %d", &typ, &rx.Slot, &rx.Seq, &rx.Len); err != nil {
		return Rx{}, false
	}
	rx.Type, rx.Param, rx.Line = ccid.MessageType(typ), f[4], line
	if len(f) > 6 {
		rx.Data = f[6]
	}
	return rx, true
}

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

func withTCK(atr []byte) []byte {
	var x byte
	for _, b := range atr[1:] {
		x ^= b
	}
	return append(atr, x)
}
