package main

import (
	"strings"
	"testing"

	"github.com/wsrc-go/wsrc/card/sim"
	"github.com/wsrc-go/wsrc/ccid"
	"github.com/wsrc-go/wsrc/ccid/ccidsim"
)

// TestReadersCCIDFilter: --reader-exclude reaches the ccid backend: the
// excluded reader is listed as skipped with the pattern and never
// claimed; the other one is loaded and its card read.
func TestReadersCCIDFilter(t *testing.T) {
	bus := ccidsim.NewBus()
	left := bus.Plug(ccidsim.SCR3310)
	left.Slot(0).Insert(sim.New(sim.Config{}), ccidsim.CardQuirks{})
	used := bus.Plug(ccidsim.ACR39U)
	used.Slot(0).Insert(sim.New(sim.Config{}), ccidsim.CardQuirks{})
	ccidTestOptions = func(o *ccid.Options) { o.Bus = bus }
	t.Cleanup(func() { ccidTestOptions = nil })

	code, out, errs := runCmd(t, noEnv, "readers", "--backend", "ccid", "--reader-exclude", "/SCR3310/")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var skipped, loaded bool
	for l := range strings.SplitSeq(out, "\n") {
		switch {
		case strings.Contains(l, "SCR3310"):
			skipped = strings.Contains(l, `skipped: excluded by reader exclude pattern "/SCR3310/"`)
		case strings.Contains(l, "ACR39U"):
			loaded = strings.Contains(l, "loaded") && strings.Contains(l, "ICCID "+sim.DefaultICCID)
		}
	}
	if !skipped || !loaded {
		t.Errorf("output:\n%s", out)
	}
	if left.Claimed() != 0 || left.Opened() != 0 {
		t.Errorf("excluded reader: %d interfaces claimed, %d opens", left.Claimed(), left.Opened())
	}
}
