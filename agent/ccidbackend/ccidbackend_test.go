package ccidbackend

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/wsrc-go/wsrc/agent"
	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/card/sim"
	"github.com/wsrc-go/wsrc/ccid"
	"github.com/wsrc-go/wsrc/ccid/ccidsim"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func backend(bus *ccidsim.Bus) *Backend {
	return New(Config{Options: ccid.Options{Bus: bus, Logger: slog.New(slog.DiscardHandler)}})
}

func next(t *testing.T, events <-chan agent.SlotEvent) agent.SlotEvent {
	t.Helper()
	select {
	case ev := <-events:
		return ev
	case <-time.After(time.Minute):
		t.Fatal("no event")
	}
	return agent.SlotEvent{}
}

func TestRun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		bus := ccidsim.NewBus()
		r := bus.Plug(ccidsim.OCTSIM)
		r.Slot(5).Insert(sim.New(sim.Config{T0GetResponse: true}), ccidsim.CardQuirks{})
		busy := bus.Plug(ccidsim.SCR3310)
		busy.SetClaimedElsewhere(true)
		b := backend(bus)
		if b.Name() != "ccid" {
			t.Errorf("Name %q", b.Name())
		}
		ctx, cancel := context.WithCancel(context.Background())
		events := make(chan agent.SlotEvent)
		done := make(chan error, 1)
		go func() { done <- b.Run(ctx, events) }()

		ev := next(t, events)
		if !ev.Present || ev.Slot.Backend != "ccid" || ev.Slot.Index != 5 || !strings.HasPrefix(ev.Slot.Reader, "sysmoOCTSIM [") {
			t.Fatalf("event %+v", ev)
		}
		if got := ev.Slot.ReaderName(); !strings.HasSuffix(got, "] slot 5") {
			t.Errorf("reader name %q", got)
		}
		c, err := ev.Open(ctx)
		if err != nil {
			t.Fatal(err)
		}
		id, err := card.Identify(ctx, c)
		if err != nil || id.ICCID != sim.DefaultICCID || id.EID != sim.DefaultEID {
			t.Errorf("identify: %+v %v", id, err)
		}
		c.Close()
		r.Slot(5).Remove()
		if ev := next(t, events); ev.Present || ev.Slot.Index != 5 || ev.Open != nil {
			t.Errorf("removal %+v", ev)
		}
		bus.Unplug(r)
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

func TestProbe(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		bus := ccidsim.NewBus()
		b := backend(bus)
		ctx := context.Background()
		if rep := b.Probe(ctx); rep.Status != agent.StatusSkipped || rep.Reason != "no USB CCID readers" {
			t.Errorf("empty bus: %+v", rep)
		}
		b.Close()
		busy := bus.Plug(ccidsim.SCR3310)
		busy.SetClaimedElsewhere(true)
		if rep := b.Probe(ctx); rep.Status != agent.StatusSkipped || len(rep.Readers) != 1 ||
			rep.Readers[0].Status != agent.StatusSkipped || !strings.Contains(rep.Readers[0].Reason, "pcscd") {
			t.Errorf("busy reader: %+v", rep)
		}
		b.Close()
		r := bus.Plug(ccidsim.OMNIKEY3x21)
		r.Slot(0).Insert(sim.New(sim.Config{}), ccidsim.CardQuirks{})
		reports := agent.Describe(ctx, b)
		defer b.Close()
		rep := reports[0]
		if rep.Status != agent.StatusLoaded || len(rep.Readers) != 2 {
			t.Fatalf("%+v", rep)
		}
		var om agent.ReaderReport
		for _, rr := range rep.Readers {
			if strings.Contains(rr.Name, "OMNIKEY") {
				om = rr
			}
		}
		if om.Status != agent.StatusLoaded || !strings.Contains(om.Details, "extended APDU") || len(om.Slots) != 1 {
			t.Fatalf("%+v", om)
		}
		s := om.Slots[0]
		if !s.Present || s.Err != "" || s.Identities["ICCID"] != sim.DefaultICCID || len(s.ATR) == 0 {
			t.Errorf("slot %+v", s)
		}
	})
}
