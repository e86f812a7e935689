package ccid_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"testing/synctest"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/card/sim"
	"github.com/wsrc-go/wsrc/ccid"
	"github.com/wsrc-go/wsrc/ccid/ccidsim"
)

// profileExpect is what the driver should make of each reader profile
// with the simulated UICC (ATR TA1=96: Fi 512, Di 32).
var profileExpect = map[string]struct {
	level ccid.ExchangeLevel
	ta1   byte // speed the card ends up at
	pps   int  // PPS requests the card sees (host-side PPS readers)
	setp  bool // SetParameters sent
}{
	ccidsim.OMNIKEY3x21.Name: {ccid.LevelExtendedAPDU, 0x96, 0, true},
	ccidsim.SCR3310.Name:     {ccid.LevelTPDU, 0x96, 0, true},
	ccidsim.CT30.Name:        {ccid.LevelTPDU, 0x96, 1, true},
	ccidsim.ACR38U.Name:      {ccid.LevelTPDU, 0x95, 1, true}, // 250 kbit/s is over its 129 032: Di walks down
	ccidsim.ACR39U.Name:      {ccid.LevelTPDU, 0x96, 0, true},
	ccidsim.OCTSIM.Name:      {ccid.LevelTPDU, 0x96, 0, true},
	ccidsim.AU9560.Name:      {ccid.LevelExtendedAPDU, 0x95, 0, true}, // 231 kbit/s at 3.7 MHz is over its 200 000 cap
	ccidsim.NoInterrupt.Name: {ccid.LevelTPDU, 0x96, 0, true},
	ccidsim.ShortAPDU.Name:   {ccid.LevelShortAPDU, 0x96, 0, true},
	ccidsim.Composite.Name:   {ccid.LevelTPDU, 0x96, 0, true},
	ccidsim.QEMU.Name:        {ccid.LevelTPDU, 0x11, 0, false}, // negotiates by itself, stays at 115 200 max
}

// TestProfilesT0 runs the same card session through every reader
// profile, through the public API the agent uses.
func TestProfilesT0(t *testing.T) {
	for _, p := range ccidsim.Profiles() {
		t.Run(p.Name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) { profileSession(t, p) })
		})
	}
}

func profileSession(t *testing.T, p ccidsim.Profile) {
	want, ok := profileExpect[p.Name]
	if !ok {
		t.Fatalf("no expectation for %s", p.Name)
	}
	bus := ccidsim.NewBus()
	r := bus.Plug(p)
	for i := 0; i < r.Slots(); i++ {
		r.Slot(i).Insert(newCard(sim.T0), ccidsim.CardQuirks{})
	}
	h := run(t, bus, ccid.Options{})
	ctx := context.Background()
	ev := h.next(ccid.ReaderAdded)
	if ev.Reader.Status != ccid.Claimed || ev.Reader.NumSlots() != r.Slots() {
		t.Fatalf("reader %+v", ev.Reader)
	}
	if !strings.Contains(ev.Reader.Name, p.Name) || ev.Reader.Interfaces[0].Level != want.level {
		t.Errorf("reader %q level %v", ev.Reader.Name, ev.Reader.Interfaces[0].Level)
	}
	if ev.Reader.Interfaces[0].Interrupt != p.Interrupt {
		t.Errorf("interrupt %v", ev.Reader.Interfaces[0].Interrupt)
	}
	seen := map[int]card.Card{}
	for range r.Slots() {
		ev := h.next(ccid.CardInserted)
		c, err := ev.Open(ctx)
		if err != nil {
			t.Fatalf("open slot %d: %v", ev.Slot, err)
		}
		seen[ev.Slot] = c
	}
	for i := 0; i < r.Slots(); i++ {
		c := seen[i]
		if c == nil {
			t.Fatalf("slot %d not reported", i)
		}
		if !bytes.Equal(c.ATR(), sim.ATRT0) {
			t.Errorf("slot %d ATR %X", i, c.ATR())
		}
		// Case 4: SELECT MF with FCP. On T=0 the driver drops Le and
		// fetches the FCP with GET RESPONSE.
		if r := transmit(t, ctx, c, "00a40004023f0000"); sw(r) != "9000" || len(r) < 20 {
			t.Errorf("slot %d SELECT MF: %s", i, r)
		}
		// Case 3.
		if r := transmit(t, ctx, c, "00a4000c022fe2"); r != "9000" {
			t.Errorf("slot %d SELECT EF.ICCID: %s", i, r)
		}
		// Case 2, exact Le.
		if r := transmit(t, ctx, c, "00b000000a"); sw(r) != "9000" || len(r) != 24 {
			t.Errorf("slot %d READ BINARY: %s", i, r)
		}
		// Case 2, Le=00 (256) on the 4000-byte EF.
		if r := transmit(t, ctx, c, "00a4000c026f99"); r != "9000" {
			t.Errorf("slot %d SELECT 6F99: %s", i, r)
		}
		resp, err := c.Transmit(ctx, unhex(t, "00b0000000"))
		if err != nil || len(resp) != 258 || resp[256] != 0x90 || resp[1] != 1 {
			t.Errorf("slot %d READ BINARY 256: %d bytes, %v", i, len(resp), err)
		}
		proto, ta1 := r.Slot(i).Params()
		if proto != 0 || ta1 != want.ta1 {
			t.Errorf("slot %d runs T=%d at TA1 %02X, want T=0 at %02X", i, proto, ta1, want.ta1)
		}
	}
	st := r.Stats()
	if len(st.PPS) != want.pps*r.Slots() {
		t.Errorf("%d PPS requests (% X), want %d per slot", len(st.PPS), st.PPS, want.pps)
	}
	if (len(st.SetParameters) > 0) != want.setp {
		t.Errorf("SetParameters sent: % X", st.SetParameters)
	}
	for _, c := range seen {
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := c.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	}
	for i := 0; i < r.Slots(); i++ {
		if r.Slot(i).Powered() {
			t.Errorf("slot %d still powered after Close", i)
		}
	}
	if _, err := seen[0].Transmit(ctx, unhex(t, "00a4000c023f00")); !errors.Is(err, card.ErrClosed) {
		t.Errorf("Transmit after Close: %v", err)
	}
	h.stop()
	if r.Claimed() != 0 || r.Opened() != 0 {
		t.Errorf("after Close: %d interfaces claimed, %d handles open", r.Claimed(), r.Opened())
	}
}

// TestProfilesT1 runs a T=1 card through every TPDU reader that
// supports T=1: the host runs the block protocol (package t1) and
// negotiates IFSD unless the reader does.
func TestProfilesT1(t *testing.T) {
	for _, p := range []ccidsim.Profile{ccidsim.SCR3310, ccidsim.CT30, ccidsim.ACR38U, ccidsim.ACR39U, ccidsim.NoInterrupt,
		ccidsim.OMNIKEY3x21, ccidsim.ShortAPDU} {
		t.Run(p.Name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				bus := ccidsim.NewBus()
				r := bus.Plug(p)
				r.Slot(0).Insert(newCard(sim.T1), ccidsim.CardQuirks{})
				h := run(t, bus, ccid.Options{})
				ctx := context.Background()
				c := h.openFirst(ctx, 1)[0]
				if r := transmit(t, ctx, c, "00a40004023f0000"); sw(r) != "9000" || len(r) < 20 {
					t.Errorf("SELECT MF: %s", r)
				}
				transmit(t, ctx, c, "00a4000c026f99")
				// A 1000-byte extended UPDATE BINARY and a 4000-byte extended
				// READ BINARY: chained I-blocks (TPDU) or chained XfrBlocks.
				data := bytes.Repeat([]byte{0x5A}, 1000)
				cmd := append(unhex(t, "00d6000000 03e8"), data...)
				if p.Descriptor.Features.ExchangeLevel() == ccid.LevelShortAPDU {
					if _, err := c.Transmit(ctx, cmd); !errors.Is(err, ccid.ErrUnsupported) {
						t.Errorf("extended APDU on a short-APDU reader: %v", err)
					}
					return
				}
				if r := transmit(t, ctx, c, hexs(cmd)); r != "9000" {
					t.Fatalf("UPDATE BINARY 1000: %s", r)
				}
				resp, err := c.Transmit(ctx, unhex(t, "00b00000 000fa0"))
				if err != nil || len(resp) != 4002 || !bytes.Equal(resp[:1000], data) || resp[4000] != 0x90 {
					t.Fatalf("READ BINARY 4000: %d bytes, %v", len(resp), err)
				}
				proto, ta1 := r.Slot(0).Params()
				if proto != 1 || ta1 == 0x11 {
					t.Errorf("card runs T=%d at %02X", proto, ta1)
				}
				if p.Descriptor.Features.ExchangeLevel() == ccid.LevelTPDU {
					st := r.Slot(0).T1().Stats()
					wantIFSD := int(p.Descriptor.MaxIFSD)
					if p.Descriptor.Features.Has(ccid.FeatureAutoIFSD) {
						wantIFSD = 32 // the reader would do it; the simulation does not
					}
					if st.IFSD != wantIFSD || st.Commands < 4 {
						t.Errorf("card side: %+v (want IFSD %d)", st, wantIFSD)
					}
				}
			})
		})
	}
}

func hexs(b []byte) string { return fmt.Sprintf("%x", b) }
