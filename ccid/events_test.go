package ccid_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/card/sim"
	"github.com/wsrc-go/wsrc/ccid"
	"github.com/wsrc-go/wsrc/ccid/ccidsim"
)

// TestCardEventsInterrupt: insertion and removal arrive as
// NotifySlotChange; a removed card's handle fails with ErrRemoved and
// an Open for a card that is gone fails too.
func TestCardEventsInterrupt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) { cardEvents(t, ccidsim.SCR3310) })
}

// TestCardEventsPolling: the same without an interrupt endpoint, by
// GetSlotStatus polling every 400 ms.
func TestCardEventsPolling(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		cardEvents(t, ccidsim.NoInterrupt)
		if d := time.Since(start); d < 400*time.Millisecond {
			t.Errorf("polling found changes after %v", d)
		}
	})
}

func cardEvents(t *testing.T, p ccidsim.Profile) {
	bus := ccidsim.NewBus()
	r := bus.Plug(p)
	h := run(t, bus, ccid.Options{})
	ctx := context.Background()
	h.next(ccid.ReaderAdded)
	h.quietFor(2 * time.Second) // empty slot: nothing to say

	r.Slot(0).Insert(newCard(sim.T0), ccidsim.CardQuirks{})
	ev := h.next(ccid.CardInserted)
	c, err := ev.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	transmit(t, ctx, c, "00a4000c023f00")

	r.Slot(0).Remove()
	h.next(ccid.CardRemoved)
	if _, err := c.Transmit(ctx, unhex(t, "00a4000c023f00")); !errors.Is(err, card.ErrRemoved) {
		t.Errorf("Transmit on a removed card: %v", err)
	}
	if _, err := ev.Open(ctx); !errors.Is(err, card.ErrRemoved) {
		t.Errorf("Open of a removed card: %v", err)
	}

	// A new card: a new event whose Open works; the stale handle stays dead.
	r.Slot(0).Insert(newCard(sim.T0), ccidsim.CardQuirks{})
	ev2 := h.next(ccid.CardInserted)
	c2, err := ev2.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	transmit(t, ctx, c2, "00a4000c023f00")
	if _, err := c.Transmit(ctx, unhex(t, "00a4000c023f00")); !errors.Is(err, card.ErrRemoved) {
		t.Errorf("old handle after reinsertion: %v", err)
	}
	h.quietFor(2 * time.Second) // polling an idle powered card reports nothing
	transmit(t, ctx, c2, "00a4000c023f00")
}

// TestSwapBetweenPolls: a powered card that reads "present, inactive"
// was swapped (or deactivated): it is reported removed and inserted.
func TestSwapBetweenPolls(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		bus := ccidsim.NewBus()
		r := bus.Plug(ccidsim.NoInterrupt)
		r.Slot(0).Insert(newCard(sim.T0), ccidsim.CardQuirks{})
		h := run(t, bus, ccid.Options{})
		ctx := context.Background()
		c := h.openFirst(ctx, 1)[0]
		// Swap faster than the poll: same "present", card now inactive.
		r.Slot(0).Remove()
		r.Slot(0).Insert(newCard(sim.T0), ccidsim.CardQuirks{})
		h.next(ccid.CardRemoved)
		ev := h.next(ccid.CardInserted)
		if _, err := c.Transmit(ctx, unhex(t, "00a4000c023f00")); !errors.Is(err, card.ErrRemoved) {
			t.Errorf("old card: %v", err)
		}
		c2, err := ev.Open(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer c2.Close()
		transmit(t, ctx, c2, "00a4000c023f00")
	})
}

// TestReaderHotplug: readers plugged and unplugged while Run runs, with
// netlink-style events (the simulated bus's Watch) and, when the bus
// cannot watch, with the periodic rescan.
func TestReaderHotplug(t *testing.T) {
	for _, noHotplug := range []bool{false, true} {
		name := map[bool]string{false: "uevents", true: "rescan"}[noHotplug]
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				bus := ccidsim.NewBus()
				bus.NoHotplug = noHotplug
				h := run(t, bus, ccid.Options{RescanInterval: 5 * time.Second})
				ctx := context.Background()
				start := time.Now()
				h.quietFor(time.Second)
				r := bus.Plug(ccidsim.OMNIKEY3x21)
				r.Slot(0).Insert(newCard(sim.T0), ccidsim.CardQuirks{})
				c := h.openFirst(ctx, 1)[0]
				took := time.Since(start) - time.Second
				if noHotplug && took < 3*time.Second || !noHotplug && took > time.Second {
					t.Errorf("reader found after %v", took)
				}
				transmit(t, ctx, c, "00a4000c023f00")
				bus.Unplug(r)
				h.next(ccid.CardRemoved)
				ev := h.next(ccid.ReaderRemoved)
				if !strings.Contains(ev.Reader.Name, "OMNIKEY") {
					t.Errorf("removed %q", ev.Reader.Name)
				}
				if _, err := c.Transmit(ctx, unhex(t, "00a4000c023f00")); !errors.Is(err, card.ErrRemoved) {
					t.Errorf("Transmit after unplug: %v", err)
				}
				if err := c.Close(); err != nil {
					t.Errorf("Close after unplug: %v", err)
				}
				if r.Claimed() != 0 || r.Opened() != 0 {
					t.Errorf("unplugged reader still claimed (%d) or open (%d)", r.Claimed(), r.Opened())
				}
			})
		})
	}
}

// TestClaimOutcomes: a reader pcscd holds is skipped (and taken once it
// is free), one without permission fails, a character-level one is
// skipped for good.
func TestClaimOutcomes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		bus := ccidsim.NewBus()
		busy := bus.Plug(ccidsim.SCR3310)
		busy.SetClaimedElsewhere(true)
		busy.Slot(0).Insert(newCard(sim.T0), ccidsim.CardQuirks{})
		denied := bus.Plug(ccidsim.ACR39U)
		denied.SetAccessDenied(true)
		bus.Plug(ccidsim.CharacterLevel)

		infos, err := ccid.Readers(context.Background(), ccid.Options{Bus: bus, Logger: quiet()})
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]ccid.ReaderInfo{}
		for _, ri := range infos {
			got[ri.Product+ri.Name] = ri
		}
		if len(infos) != 3 {
			t.Fatalf("%d readers: %+v", len(infos), infos)
		}
		for _, ri := range infos {
			switch {
			case strings.Contains(ri.Name, "SCR3310"):
				if ri.Status != ccid.Skipped || !strings.Contains(ri.Reason, "claimed by another process") {
					t.Errorf("busy reader: %v %q", ri.Status, ri.Reason)
				}
			case strings.Contains(ri.Name, "072f:b100"):
				if ri.Status != ccid.Failed || !strings.Contains(ri.Reason, "permission denied") {
					t.Errorf("denied reader: %v %q", ri.Status, ri.Reason)
				}
			case strings.Contains(ri.Name, "Character"):
				if ri.Status != ccid.Skipped || !strings.Contains(ri.Reason, "character exchange is not supported") {
					t.Errorf("character reader: %v %q", ri.Status, ri.Reason)
				}
				if ri.Interfaces[0].Level != ccid.LevelCharacter {
					t.Errorf("level %v", ri.Interfaces[0].Level)
				}
			default:
				t.Errorf("unexpected reader %q", ri.Name)
			}
		}
		if busy.Claimed() != 0 || busy.Opened() != 0 || denied.Opened() != 0 {
			t.Error("readers left open after Readers")
		}

		// Under Run, the busy reader is taken once pcscd lets go.
		h := run(t, bus, ccid.Options{RescanInterval: 5 * time.Second})
		for range 3 {
			h.next(ccid.ReaderAdded)
		}
		h.quietFor(6 * time.Second) // retried, same outcome: no news
		busy.SetClaimedElsewhere(false)
		ev := h.next(ccid.ReaderAdded)
		if ev.Reader.Status != ccid.Claimed || !strings.Contains(ev.Reader.Name, "SCR3310") {
			t.Fatalf("%v %v %q", ev.Reader.Name, ev.Reader.Status, ev.Reader.Reason)
		}
		h.next(ccid.CardInserted)
	})
}

// TestReaderFilter: a reader the filter refuses is skipped with its
// reason and never claimed, under Readers and under Run, and stays so on
// rescans; the others are claimed as usual.
func TestReaderFilter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		bus := ccidsim.NewBus()
		left := bus.Plug(ccidsim.SCR3310)
		left.Slot(0).Insert(newCard(sim.T0), ccidsim.CardQuirks{})
		bus.Plug(ccidsim.ACR39U)
		var asked []string
		filter := func(name string) string {
			asked = append(asked, name)
			if strings.Contains(name, "SCR3310") {
				return "excluded by test"
			}
			return ""
		}
		opts := ccid.Options{Bus: bus, Logger: quiet(), ReaderFilter: filter}
		infos, err := ccid.Readers(context.Background(), opts)
		if err != nil {
			t.Fatal(err)
		}
		if len(infos) != 2 || len(asked) != 2 {
			t.Fatalf("%d readers, filter asked about %q", len(infos), asked)
		}
		for _, ri := range infos {
			excluded := strings.Contains(ri.Name, "SCR3310")
			if excluded && (ri.Status != ccid.Skipped || ri.Reason != "excluded by test") {
				t.Errorf("excluded reader: %v %q", ri.Status, ri.Reason)
			}
			if !excluded && ri.Status != ccid.Claimed {
				t.Errorf("other reader %q: %v %q", ri.Name, ri.Status, ri.Reason)
			}
		}

		h := run(t, bus, ccid.Options{ReaderFilter: filter, RescanInterval: 5 * time.Second})
		seen := map[ccid.ClaimStatus]int{}
		for range 2 {
			ev := h.next(ccid.ReaderAdded)
			seen[ev.Reader.Status]++
		}
		if seen[ccid.Claimed] != 1 || seen[ccid.Skipped] != 1 {
			t.Fatalf("claim outcomes %v", seen)
		}
		h.quietFor(11 * time.Second) // rescans: no card event from the excluded reader
		if left.Claimed() != 0 {
			t.Errorf("excluded reader has %d interfaces claimed", left.Claimed())
		}
	})
}

// TestReadersSnapshot: Driver.Readers with presence and Open, and the
// summary the agent prints.
func TestReadersSnapshot(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		bus := ccidsim.NewBus()
		r := bus.Plug(ccidsim.OCTSIM)
		r.Slot(3).Insert(newCard(sim.T0), ccidsim.CardQuirks{})
		d, err := ccid.New(ccid.Options{Bus: bus, Logger: quiet()})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		ctx := context.Background()
		infos, err := d.Readers(ctx)
		if err != nil || len(infos) != 1 {
			t.Fatal(infos, err)
		}
		ri := infos[0]
		if s := ri.Summary(); s != "USB 1d50:6141, TPDU, T=0, max 921600 bit/s, 8 slots" {
			t.Errorf("summary %q", s)
		}
		if len(ri.Slots) != 8 {
			t.Fatalf("%d slots", len(ri.Slots))
		}
		for _, s := range ri.Slots {
			if s.Present != (s.Index == 3) || (s.Open != nil) != s.Present {
				t.Errorf("slot %+v", s)
			}
		}
		c, err := ri.Slots[3].Open(ctx)
		if err != nil {
			t.Fatal(err)
		}
		transmit(t, ctx, c, "00a4000c023f00")
		c.Close()
		// Run after Readers reports what is known.
		h := &harness{t: t, d: d, events: make(chan ccid.Event, 16), done: make(chan error, 1)}
		rctx, cancel := context.WithCancel(ctx)
		go func() { h.done <- d.Run(rctx, h.events) }()
		h.next(ccid.ReaderAdded)
		if ev := h.next(ccid.CardInserted); ev.Slot != 3 {
			t.Errorf("slot %d", ev.Slot)
		}
		if err := d.Run(rctx, nil); !errors.Is(err, ccid.ErrRunning) {
			t.Errorf("second Run: %v", err)
		}
		cancel()
		<-h.done
	})
}

// TestWatchAndProtocolRefusal: ccid.Watch runs a driver until ctx ends;
// a T=1-only card in the T=0-only sysmoOCTSIM is refused with a clear
// error.
func TestWatchAndProtocolRefusal(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		bus := ccidsim.NewBus()
		r := bus.Plug(ccidsim.OCTSIM)
		r.Slot(2).Insert(newCard(sim.T1), ccidsim.CardQuirks{})
		ctx, cancel := context.WithCancel(context.Background())
		events := make(chan ccid.Event)
		done := make(chan error, 1)
		go func() { done <- ccid.Watch(ctx, ccid.Options{Bus: bus, Logger: quiet()}, events) }()
		if ev := <-events; ev.Kind != ccid.ReaderAdded || ev.Kind.String() != "reader added" || ev.Reader.Status.String() != "claimed" {
			t.Fatalf("%v %v", ev.Kind, ev.Reader.Status)
		}
		ev := <-events
		_, err := ev.Open(ctx)
		if !errors.Is(err, ccid.ErrUnsupported) || !strings.Contains(err.Error(), "the card offers T=[1], the reader supports T=0") {
			t.Errorf("T=1 card in a T=0 reader: %v", err)
		}
		if r.Slot(2).Powered() {
			t.Error("refused card left powered")
		}
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
		if r.Claimed() != 0 {
			t.Error("Watch left the reader claimed")
		}
	})
}
