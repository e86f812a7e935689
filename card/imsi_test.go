package card_test

import (
	"context"
	"errors"
	"testing"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/card/sim"
)

func TestReadIMSI(t *testing.T) {
	ctx := context.Background()
	for _, cfg := range []sim.Config{
		{USIM: true},
		{USIM: true, T0GetResponse: true},
		{USIM: true, IMSI: "26201987654321", EID: sim.NoEID, Protocol: sim.T1},
	} {
		c := sim.New(cfg)
		got, err := card.ReadIMSI(ctx, c)
		if err != nil {
			t.Errorf("%+v: %v", cfg, err)
			continue
		}
		if got != c.Identity().IMSI {
			t.Errorf("%+v: IMSI %q, want %q", cfg, got, c.Identity().IMSI)
		}
	}
	// The recorded eUICC has no enabled profile: no USIM, no DF.GSM.
	_, err := card.ReadIMSI(ctx, sim.New(sim.Config{}))
	if !errors.Is(err, card.ErrFileNotFound) {
		t.Errorf("card without USIM: %v", err)
	}
	// Transport errors are not mistaken for a missing USIM.
	c := sim.New(sim.Config{USIM: true})
	c.Close()
	if _, err := card.ReadIMSI(ctx, c); !errors.Is(err, card.ErrClosed) {
		t.Errorf("closed card: %v", err)
	}
}
