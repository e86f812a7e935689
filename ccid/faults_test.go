package ccid_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/card/sim"
	"github.com/wsrc-go/wsrc/ccid"
	"github.com/wsrc-go/wsrc/ccid/ccidsim"
	"github.com/wsrc-go/wsrc/ccid/t1"
)

// single plugs one reader with one card and opens it.
func single(t *testing.T, p ccidsim.Profile, c ccidsim.Card, q ccidsim.CardQuirks) (*harness, *ccidsim.Reader, card.Card) {
	t.Helper()
	bus := ccidsim.NewBus()
	r := bus.Plug(p)
	r.Slot(0).Insert(c, q)
	h := run(t, bus, ccid.Options{})
	return h, r, h.openFirst(context.Background(), 1)[0]
}

// The simulated UICC's T=0 timeout on these readers is the ISO 7816-3
// worst case, about 5 minutes (260 work waiting times of 1.2 s); the
// tests run in synctest bubbles, so that costs nothing.
const simCardTimeout = 5*time.Minute + 20*time.Second

// TestTimeExtension: a card that works for 10 minutes while the reader
// sends a time extension every minute is waited for; one that works
// as long without them times out, is aborted, and the slot recovers.
func TestTimeExtension(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, r, c := single(t, ccidsim.SCR3310, newCard(sim.T0), ccidsim.CardQuirks{})
		ctx := context.Background()
		r.Slot(0).SetQuirks(ccidsim.CardQuirks{Delay: 10 * time.Minute, WTX: time.Minute})
		start := time.Now()
		if got := transmit(t, ctx, c, "00a4000c023f00"); got != "9000" {
			t.Errorf("slow card: %s", got)
		}
		if d := time.Since(start); d != 10*time.Minute {
			t.Errorf("took %v", d)
		}

		r.Slot(0).SetQuirks(ccidsim.CardQuirks{Delay: 10 * time.Minute})
		start = time.Now()
		_, err := c.Transmit(ctx, unhex(t, "00a4000c023f00"))
		if !errors.Is(err, ccid.ErrTimeout) || !errors.Is(err, card.ErrMute) {
			t.Fatalf("slow card without time extension: %v", err)
		}
		if d := time.Since(start); d < simCardTimeout-30*time.Second || d > simCardTimeout+time.Minute {
			t.Errorf("timed out after %v", d)
		}
		st := r.Stats()
		if st.Aborts != 1 || st.ControlAborts != 1 {
			t.Errorf("aborts: %d bulk, %d control", st.Aborts, st.ControlAborts)
		}
		r.Slot(0).SetQuirks(ccidsim.CardQuirks{})
		if got := transmit(t, ctx, c, "00a4000c023f00"); got != "9000" {
			t.Errorf("after abort: %s", got)
		}
	})
}

// TestContextCancelAborts: a caller's deadline ends the command with an
// Abort; the slot goes on working.
func TestContextCancelAborts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, r, c := single(t, ccidsim.CT30, newCard(sim.T0), ccidsim.CardQuirks{})
		r.Slot(0).SetQuirks(ccidsim.CardQuirks{Delay: time.Hour})
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if _, err := c.Transmit(ctx, unhex(t, "00a4000c023f00")); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v", err)
		}
		r.Slot(0).SetQuirks(ccidsim.CardQuirks{})
		if got := transmit(t, context.Background(), c, "00a4000c023f00"); got != "9000" {
			t.Errorf("after cancel: %s", got)
		}
	})
}

// TestHungReader: a reader that swallows a command is aborted and goes
// on; one that swallows the Abort too is dropped, reset and reopened.
func TestHungReader(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h, r, c := single(t, ccidsim.ACR39U, newCard(sim.T0), ccidsim.CardQuirks{})
		ctx := context.Background()
		r.HangNext(1, false)
		if _, err := c.Transmit(ctx, unhex(t, "00a4000c023f00")); !errors.Is(err, ccid.ErrTimeout) {
			t.Fatalf("hung command: %v", err)
		}
		if got := transmit(t, ctx, c, "00a4000c023f00"); got != "9000" {
			t.Errorf("after abort: %s", got)
		}

		r.HangNext(1, true)
		_, err := c.Transmit(ctx, unhex(t, "00a4000c023f00"))
		if !errors.Is(err, ccid.ErrTimeout) || !strings.Contains(err.Error(), "abort failed") {
			t.Fatalf("hung reader: %v", err)
		}
		h.next(ccid.CardRemoved)
		h.next(ccid.ReaderRemoved)
		if _, err := c.Transmit(ctx, unhex(t, "00a4000c023f00")); !errors.Is(err, card.ErrRemoved) {
			t.Errorf("old handle: %v", err)
		}
		c2 := h.openFirst(ctx, 1)[0]
		if got := transmit(t, ctx, c2, "00a4000c023f00"); got != "9000" {
			t.Errorf("after reopening: %s", got)
		}
		if st := r.Stats(); st.Resets != 1 {
			t.Errorf("%d USB resets", st.Resets)
		}
	})
}

// TestStalledBulkIn: a reader that halts its bulk-in endpoint fails the
// command in flight (card.ErrRemoved), is reported removed, reset (a USB
// reset clears the halt) and reopened, and its card works again. Found
// by the reader lab (test/gadget TestGadgetStall): before, the stall
// counted as the reader gone, and the reader, claimed again with the
// endpoint still halted, failed again at every scan.
func TestStalledBulkIn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h, r, c := single(t, ccidsim.ACR39U, newCard(sim.T0), ccidsim.CardQuirks{})
		ctx := context.Background()
		r.Slot(0).SetQuirks(ccidsim.CardQuirks{Delay: time.Second})
		errc := make(chan error, 1)
		go func() {
			_, err := c.Transmit(ctx, unhex(t, "00a4000c023f00"))
			errc <- err
		}()
		synctest.Wait()
		r.StallBulkIn()
		if err := <-errc; !errors.Is(err, card.ErrRemoved) || !errors.Is(err, ccid.ErrReaderHung) {
			t.Fatalf("command during the stall: %v", err)
		}
		h.next(ccid.CardRemoved)
		h.next(ccid.ReaderRemoved)
		r.Slot(0).SetQuirks(ccidsim.CardQuirks{})
		c2 := h.openFirst(ctx, 1)[0]
		if got := transmit(t, ctx, c2, "00a4000c023f00"); got != "9000" {
			t.Errorf("after the reset: %s", got)
		}
		if st := r.Stats(); st.Resets != 1 {
			t.Errorf("%d USB resets, want 1", st.Resets)
		}
	})
}

// TestStaleAndWrongSeq: a repeated old answer and an answer with a wrong
// bSeq are dropped; the right answer is used.
func TestStaleAndWrongSeq(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, r, c := single(t, ccidsim.OMNIKEY3x21, newCard(sim.T0), ccidsim.CardQuirks{})
		ctx := context.Background()
		transmit(t, ctx, c, "00a4000c023f00")
		r.InjectStale()
		if got := transmit(t, ctx, c, "00a40004023f0000"); sw(got) != "9000" || len(got) < 20 {
			t.Errorf("after a stale frame: %s", got)
		}
		r.InjectWrongSeq()
		if got := transmit(t, ctx, c, "00a4000c022fe2"); got != "9000" {
			t.Errorf("after a wrong bSeq: %s", got)
		}
		if got := transmit(t, ctx, c, "00b000000a"); len(got) != 24 {
			t.Errorf("afterwards: %s", got)
		}
	})
}

// TestMuteCard: the reader reports the card mute and deactivates it; the
// error says so and the slot is reported anew so the agent restarts.
func TestMuteCard(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h, r, c := single(t, ccidsim.OCTSIM, newCard(sim.T0), ccidsim.CardQuirks{})
		ctx := context.Background()
		r.Slot(0).SetQuirks(ccidsim.CardQuirks{Mute: true})
		_, err := c.Transmit(ctx, unhex(t, "00a4000c023f00"))
		var se *ccid.SlotError
		if !errors.Is(err, card.ErrMute) || !errors.Is(err, ccid.ErrICCMute) || !errors.As(err, &se) {
			t.Fatalf("mute card: %v", err)
		}
		if se.Slot != 0 || !strings.Contains(se.Reader, "sysmoOCTSIM") || !strings.Contains(err.Error(), "slot 0") {
			t.Errorf("error lacks reader and slot: %v", err)
		}
		if _, err := c.Transmit(ctx, unhex(t, "00a4000c023f00")); !errors.Is(err, card.ErrRemoved) {
			t.Errorf("deactivated card: %v", err)
		}
		h.next(ccid.CardRemoved)
		ev := h.next(ccid.CardInserted)
		r.Slot(0).SetQuirks(ccidsim.CardQuirks{})
		c2, err := ev.Open(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer c2.Close()
		transmit(t, ctx, c2, "00a4000c023f00")
	})
}

// TestRemovalMidCommand: the card goes while a command runs.
func TestRemovalMidCommand(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h, r, c := single(t, ccidsim.CT30, newCard(sim.T0), ccidsim.CardQuirks{})
		r.Slot(0).RemoveDuringNextCommand()
		_, err := c.Transmit(context.Background(), unhex(t, "00a4000c023f00"))
		if !errors.Is(err, card.ErrRemoved) || errors.Is(err, card.ErrNoCard) {
			t.Fatalf("got %v", err)
		}
		h.next(ccid.CardRemoved)
	})
}

// TestVoltageSelection: readers without automatic voltage selection try
// 5 V, then 1.8 V, then 3 V, skipping what they do not support.
func TestVoltageSelection(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, r, c := single(t, ccidsim.CT30, newCard(sim.T0), ccidsim.CardQuirks{Classes: 0x04})
		transmit(t, context.Background(), c, "00a4000c023f00")
		if v := r.Stats().Voltages; !bytes.Equal(v, []byte{ccid.Voltage5V, ccid.Voltage18V}) {
			t.Errorf("voltages tried: % X", v)
		}
	})
	synctest.Test(t, func(t *testing.T) {
		// The ACR38U has 5 V only: a 1.8 V card cannot be powered.
		bus := ccidsim.NewBus()
		r := bus.Plug(ccidsim.ACR38U)
		r.Slot(0).Insert(newCard(sim.T0), ccidsim.CardQuirks{Classes: 0x04})
		h := run(t, bus, ccid.Options{})
		h.next(ccid.ReaderAdded)
		_, err := h.next(ccid.CardInserted).Open(context.Background())
		if !errors.Is(err, card.ErrMute) || !strings.Contains(err.Error(), "at 5 V") {
			t.Errorf("got %v", err)
		}
		if v := r.Stats().Voltages; !bytes.Equal(v, []byte{ccid.Voltage5V}) {
			t.Errorf("voltages tried: % X", v)
		}
	})
	synctest.Test(t, func(t *testing.T) {
		// Automatic voltage: one IccPowerOn with bPowerSelect 0.
		_, r, _ := single(t, ccidsim.SCR3310, newCard(sim.T0), ccidsim.CardQuirks{Classes: 0x04})
		if v := r.Stats().Voltages; !bytes.Equal(v, []byte{ccid.VoltageAuto}) {
			t.Errorf("voltages tried: % X", v)
		}
	})
}

// TestPPSWalkDown: when the card refuses a speed the driver resets it
// and proposes the next slower one, down to the default.
func TestPPSWalkDown(t *testing.T) {
	for _, tc := range []struct {
		name    string
		p       ccidsim.Profile
		q       ccidsim.CardQuirks
		ta1     byte
		pps     int // PPS requests (host PPS readers)
		setParm int
	}{
		{"host PPS, card up to Di 8", ccidsim.CT30, ccidsim.CardQuirks{MaxTA1: 0x94}, 0x94, 3, 1},
		{"host PPS, card rejects PPS", ccidsim.CT30, ccidsim.CardQuirks{RejectPPS: true}, 0x11, 5, 1},
		{"reader PPS, card up to Di 16", ccidsim.SCR3310, ccidsim.CardQuirks{MaxTA1: 0x95}, 0x95, 0, 2},
		{"reader PPS, card rejects PPS", ccidsim.ACR39U, ccidsim.CardQuirks{RejectPPS: true}, 0x11, 0, 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				_, r, c := single(t, tc.p, newCard(sim.T0), tc.q)
				transmit(t, context.Background(), c, "00a4000c023f00")
				if _, ta1 := r.Slot(0).Params(); ta1 != tc.ta1 {
					t.Errorf("card at %02X, want %02X", ta1, tc.ta1)
				}
				st := r.Stats()
				if len(st.PPS) != tc.pps || len(st.SetParameters) != tc.setParm {
					t.Errorf("PPS % X, SetParameters % X", st.PPS, st.SetParameters)
				}
			})
		})
	}
}

// TestMultiSlotConcurrency: the 8-slot OCTSIM runs 8 slow commands at
// once (bMaxCCIDBusySlots 8), never two on one slot.
func TestMultiSlotConcurrency(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		bus := ccidsim.NewBus()
		r := bus.Plug(ccidsim.OCTSIM)
		for i := range 8 {
			r.Slot(i).Insert(newCard(sim.T0), ccidsim.CardQuirks{})
		}
		h := run(t, bus, ccid.Options{})
		ctx := context.Background()
		cards := h.openFirst(ctx, 8)
		for i := range 8 {
			r.Slot(i).SetQuirks(ccidsim.CardQuirks{Delay: time.Second})
		}
		start := time.Now()
		var wg sync.WaitGroup
		for _, c := range cards {
			for range 2 { // two callers per card: serialised by the slot
				wg.Go(func() {
					if got := transmit(t, ctx, c, "00a4000c023f00"); got != "9000" {
						t.Errorf("got %s", got)
					}
				})
			}
		}
		wg.Wait()
		if d := time.Since(start); d != 2*time.Second {
			t.Errorf("16 one-second commands on 8 slots took %v", d)
		}
		st := r.Stats()
		if st.MaxBusy != 8 || st.SlotBusy != 0 {
			t.Errorf("max busy %d, slot-busy refusals %d", st.MaxBusy, st.SlotBusy)
		}
	})
}

// TestCompositeDevice: two CCID interfaces make one reader with two
// slots, each interface with its own bSeq and bulk pipes.
func TestCompositeDevice(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		bus := ccidsim.NewBus()
		r := bus.Plug(ccidsim.Composite)
		r.Slot(1).Insert(newCard(sim.T0), ccidsim.CardQuirks{})
		h := run(t, bus, ccid.Options{})
		ev := h.next(ccid.ReaderAdded)
		if len(ev.Reader.Interfaces) != 2 || ev.Reader.NumSlots() != 2 {
			t.Fatalf("%+v", ev.Reader)
		}
		ev = h.next(ccid.CardInserted)
		if ev.Slot != 1 {
			t.Errorf("slot %d", ev.Slot)
		}
		c, err := ev.Open(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		transmit(t, context.Background(), c, "00a4000c023f00")
		r.Slot(0).Insert(newCard(sim.T0), ccidsim.CardQuirks{})
		if ev := h.next(ccid.CardInserted); ev.Slot != 0 {
			t.Errorf("slot %d", ev.Slot)
		}
	})
}

// bigCard answers 80 CA hh ll with hhll bytes and 9000, like the QEMU
// prototype's card, and everything else with 9000.
type bigCard struct{}

func (bigCard) ATR() []byte { return unhexMust("3B9F96801FC78031A073BE21136743200718000001A5") }
func (bigCard) Process(cmd []byte) []byte {
	if len(cmd) >= 4 && cmd[0] == 0x80 && cmd[1] == 0xCA {
		n := int(cmd[2])<<8 | int(cmd[3])
		return append(bytes.Repeat([]byte{0xA5}, n), 0x90, 0x00)
	}
	return []byte{0x90, 0x00}
}

// TestQEMUQuirks: QEMU 7.2 drops answers over 374 bytes (the driver
// times out, aborts and goes on), answers XfrBlock without a card with
// "no card" but no failed bit, and power-on without a card with a stale
// ATR.
func TestQEMUQuirks(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, r, c := single(t, ccidsim.QEMU, bigCard{}, ccidsim.CardQuirks{})
		ctx := context.Background()
		if got := transmit(t, ctx, c, "80ca017400"); len(got) != 2*372+4 {
			t.Errorf("372 bytes: got %d hex digits", len(got))
		}
		tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := c.Transmit(tctx, unhex(t, "80ca017500"))
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("373 bytes: %v", err)
		}
		if got := transmit(t, ctx, c, "80ca000400"); got != "a5a5a5a59000" {
			t.Errorf("after the drop: %s", got)
		}
		if st := r.Stats(); st.Aborts != 1 || st.ControlAborts != 0 {
			t.Errorf("aborts %+v", st)
		}
		// Longer commands than T=0 carries are refused, although QEMU
		// would pass them on.
		big := append(unhex(t, "80da0000 00012c"), make([]byte, 300)...)
		if _, err := c.Transmit(ctx, big); !errors.Is(err, ccid.ErrUnsupported) || !strings.Contains(err.Error(), "at most 255") {
			t.Errorf("300-byte command: %v", err)
		}
	})
	synctest.Test(t, func(t *testing.T) {
		p := ccidsim.QEMU
		p.Interrupt = false // so the removal is seen by the command, not by a notification
		bus := ccidsim.NewBus()
		r := bus.Plug(p)
		r.Slot(0).Insert(bigCard{}, ccidsim.CardQuirks{})
		h := run(t, bus, ccid.Options{})
		h.next(ccid.ReaderAdded)
		ev := h.next(ccid.CardInserted)
		c, err := ev.Open(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		r.Slot(0).Remove()
		_, err = c.Transmit(context.Background(), unhex(t, "80ca000400"))
		if !errors.Is(err, card.ErrRemoved) || !strings.Contains(err.Error(), "bStatus 0x02") {
			t.Errorf("XfrBlock without card: %v", err)
		}
		h.next(ccid.CardRemoved) // the failed command made the monitor look
		// IccPowerOn without a card: QEMU sends the old ATR with ICC mute.
		r.Slot(0).Insert(bigCard{}, ccidsim.CardQuirks{})
		ev = h.next(ccid.CardInserted)
		r.Slot(0).Remove()
		if _, err := ev.Open(context.Background()); !errors.Is(err, card.ErrNoCard) {
			t.Errorf("power-on without card: %v", err)
		}
	})
}

// TestResets: warm and cold reset on T=0 and T=1 cards.
func TestResets(t *testing.T) {
	for _, proto := range []sim.Protocol{sim.T0, sim.T1} {
		t.Run(proto.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				_, r, c := single(t, ccidsim.CT30, newCard(proto), ccidsim.CardQuirks{})
				ctx := context.Background()
				transmit(t, ctx, c, "00a4000c022fe2")
				for _, kind := range []card.ResetKind{card.WarmReset, card.ColdReset} {
					before := r.Stats().Messages[ccid.PCToRDRIccPowerOff]
					a, err := c.Reset(ctx, kind)
					if err != nil || !bytes.Equal(a, c.ATR()) || len(a) == 0 {
						t.Fatalf("%v reset: %X %v", kind, a, err)
					}
					offs := r.Stats().Messages[ccid.PCToRDRIccPowerOff] - before
					if (kind == card.ColdReset) != (offs == 1) {
						t.Errorf("%v reset sent %d IccPowerOff", kind, offs)
					}
					if got := transmit(t, ctx, c, "00a40004023f0000"); sw(got) != "9000" {
						t.Errorf("after %v reset: %s", kind, got)
					}
				}
			})
		})
	}
}

// TestRefusals: what the driver will not send, with clear errors.
func TestRefusals(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, _, c := single(t, ccidsim.ACR39U, newCard(sim.T0), ccidsim.CardQuirks{})
		ctx := context.Background()
		for _, tc := range []struct {
			cmd  []byte
			want error
			text string
		}{
			{append(unhex(t, "00d60000 000100"), make([]byte, 256)...), ccid.ErrUnsupported, "T=0 carries at most 255"},
			{unhex(t, "00a40004 05 3f00"), card.ErrMalformedAPDU, "short Lc=5"},
			{unhex(t, "00a4"), card.ErrMalformedAPDU, "header alone"},
		} {
			_, err := c.Transmit(ctx, tc.cmd)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.text) || !strings.Contains(err.Error(), "ACR39U") {
				t.Errorf("% X: %v", tc.cmd[:4], err)
			}
		}
		// Extended lengths that fit T=0 are fine: Nc=255 extended, Ne=4000.
		transmit(t, ctx, c, "00a4000c026f99")
		if got := transmit(t, ctx, c, "00b00000 000fa0"); sw(got) != "9000" || len(got) < 512 {
			t.Errorf("extended Le on T=0: %d hex digits, %s", len(got), sw(got))
		}
	})
	synctest.Test(t, func(t *testing.T) {
		_, _, c := single(t, ccidsim.ShortAPDU, newCard(sim.T1), ccidsim.CardQuirks{})
		ctx := context.Background()
		// Extended form, short lengths: re-encoded.
		if got := transmit(t, ctx, c, "00a40000 000002 3f00"); sw(got) != "9000" {
			t.Errorf("extended-form SELECT: %s", got)
		}
		_, err := c.Transmit(ctx, append(unhex(t, "00d60000 000100"), make([]byte, 256)...))
		if !errors.Is(err, ccid.ErrUnsupported) || !strings.Contains(err.Error(), "short-APDU reader") {
			t.Errorf("extended APDU: %v", err)
		}
	})
}

// TestExtendedChaining: the OMNIKEY's 271-byte messages make a 4000-byte
// command and response travel in chained blocks.
func TestExtendedChaining(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, r, c := single(t, ccidsim.OMNIKEY3x21, sim.New(sim.Config{}), ccidsim.CardQuirks{})
		ctx := context.Background()
		transmit(t, ctx, c, "00a4000c026f99")
		data := make([]byte, 4000)
		for i := range data {
			data[i] = byte(i * 7)
		}
		cmd := append(unhex(t, "00d60000 000fa0"), data...)
		if got, err := c.Transmit(ctx, cmd); err != nil || !bytes.Equal(got, []byte{0x90, 0}) {
			t.Fatalf("UPDATE BINARY 4000: %X %v", got, err)
		}
		blocks := r.Stats().ChainedBlocks
		if want := (len(cmd) + 260) / 261; blocks != want {
			t.Errorf("%d command blocks, want %d", blocks, want)
		}
		got, err := c.Transmit(ctx, unhex(t, "00b00000 000fa0"))
		if err != nil || !bytes.Equal(got[:4000], data) || len(got) != 4002 {
			t.Fatalf("READ BINARY 4000: %d bytes, %v", len(got), err)
		}
		if r.Stats().ChainedBlocks-blocks != (4002+260)/261 {
			t.Errorf("%d response blocks", r.Stats().ChainedBlocks-blocks)
		}
	})
}

func unhexMust(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// TestT1Recovery: on a TPDU reader the T=1 engine answers the card's
// S(WTX) (passing bBWI in the next XfrBlock, which multiplies the wait)
// and retransmits after a block the reader reports lost.
func TestT1Recovery(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, r, c := single(t, ccidsim.CT30, newCard(sim.T1), ccidsim.CardQuirks{
			T1: t1.CardConfig{WTXEvery: 2, WTXMultiplier: 3}})
		ctx := context.Background()
		for range 4 {
			if got := transmit(t, ctx, c, "00a40004023f0000"); sw(got) != "9000" {
				t.Fatalf("SELECT: %s", got)
			}
		}
		if st := r.Stats(); !bytes.Contains(st.BWI, []byte{3}) {
			t.Errorf("bBWI seen: % X", st.BWI)
		}
		side := r.Slot(0).T1()
		side.InjectMute(1)
		if got := transmit(t, ctx, c, "00a4000c023f00"); got != "9000" {
			t.Errorf("after a lost block: %s", got)
		}
		if st := side.Stats(); st.Muted != 1 || st.WTXRequests < 2 {
			t.Errorf("card side %+v", st)
		}
	})
}
