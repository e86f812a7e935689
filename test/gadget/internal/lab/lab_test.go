package lab

import (
	"bytes"
	"context"
	"testing"

	"github.com/wsrc-go/wsrc/card/atr"
	"github.com/wsrc-go/wsrc/card/sim"
)

// TestCards checks the lab's cards: valid ATRs (TCK included), TA1 as
// asked, IFSC 32 for T=1, and the script running on each directly.
func TestCards(t *testing.T) {
	for _, p := range Profiles {
		for _, cfg := range []sim.Config{p.CardConfig(), p.CardConfigTA1(0x11)} {
			c := sim.New(cfg)
			a, err := atr.Parse(c.ATR())
			if err != nil {
				t.Fatalf("%s: ATR % X: %v", p.Name, c.ATR(), err)
			}
			if p.Protocol == sim.T1 && a.IFSC() != 32 {
				t.Errorf("%s: IFSC %d, want 32", p.Name, a.IFSC())
			}
			for _, s := range Script(context.Background(), c, p.Extended()) {
				if bytes.HasPrefix([]byte(s.Result), []byte("error")) {
					t.Errorf("%s: %s: %s", p.Name, s.Name, s.Result)
				}
			}
		}
		if ta, _ := mustParse(t, p.CardConfigTA1(0x11)).TA1(); ta != 0x11 {
			t.Errorf("%s: TA1 %02X, want 11", p.Name, ta)
		}
	}
}

func mustParse(t *testing.T, cfg sim.Config) *atr.ATR {
	t.Helper()
	a, err := atr.Parse(sim.New(cfg).ATR())
	if err != nil {
		t.Fatal(err)
	}
	return a
}
