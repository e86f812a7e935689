package ccid_test

import (
	"context"
	"testing"

	"github.com/wsrc-go/wsrc/card/sim"
	"github.com/wsrc-go/wsrc/ccid"
	"github.com/wsrc-go/wsrc/ccid/ccidsim"
)

// BenchmarkTransmit measures one APDU through the whole driver (card
// handle, exchange level, bulk-out, the simulated reader and card,
// bulk-in routing) per reader profile: SELECT MF without response data
// (case 3), and a 256-byte READ BINARY (case 2).
func BenchmarkTransmit(b *testing.B) {
	type bench struct {
		name  string
		p     ccidsim.Profile
		proto sim.Protocol
	}
	var benches []bench
	for _, p := range ccidsim.Profiles() {
		benches = append(benches, bench{p.Name, p, sim.T0})
	}
	for _, p := range []ccidsim.Profile{ccidsim.SCR3310, ccidsim.CT30} {
		benches = append(benches, bench{p.Name + " T=1", p, sim.T1})
	}
	for _, bc := range benches {
		for _, cmd := range []struct {
			name string
			apdu string
		}{{"select", "00a4000c026f99"}, {"read256", "00b0000000"}} {
			b.Run(bc.name+"/"+cmd.name, func(b *testing.B) {
				bus := ccidsim.NewBus()
				r := bus.Plug(bc.p)
				r.Slot(0).Insert(newCard(bc.proto), ccidsim.CardQuirks{})
				h := run(b, bus, ccid.Options{})
				ctx := context.Background()
				c := h.openFirst(ctx, 1)[0]
				transmit(b, ctx, c, "00a4000c026f99")
				apdu := unhex(b, cmd.apdu)
				b.ReportAllocs()
				for b.Loop() {
					resp, err := c.Transmit(ctx, apdu)
					if err != nil || len(resp) < 2 || resp[len(resp)-2] != 0x90 {
						b.Fatalf("% X %v", resp, err)
					}
				}
			})
		}
	}
}
