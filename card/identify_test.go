package card_test

import (
	"context"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/card/sim"
)

// recorder logs every command a Transmitter sees.
type recorder struct {
	t    card.Transmitter
	sent []string
}

func (r *recorder) Transmit(ctx context.Context, cmd []byte) ([]byte, error) {
	r.sent = append(r.sent, hex.EncodeToString(cmd))
	return r.t.Transmit(ctx, cmd)
}

// The c_apdus of transcript.md section 1, in order.
var pySimIdentifyAPDUs = []string{
	"00a4040410a0000005591010ffffffff8900000100",
	"80e2910006bf3e035c015a",
	"00a40000023f00",
	"00a40000022fe2",
	"00b0000000",
}

func TestIdentifyDefaultSimSendsPySimSequence(t *testing.T) {
	c := sim.New(sim.Config{})
	rec := &recorder{t: c}
	id, err := card.Identify(context.Background(), rec)
	if err != nil {
		t.Fatal(err)
	}
	want := card.Identity{EID: "89049032123451234512345678901235", ICCID: "8949440000001155314"}
	if id != want {
		t.Errorf("Identify = %+v, want %+v", id, want)
	}
	if id != c.Identity() {
		t.Errorf("Identify = %+v, sim says %+v", id, c.Identity())
	}
	if strings.Join(rec.sent, " ") != strings.Join(pySimIdentifyAPDUs, " ") {
		t.Errorf("sent %v\nwant %v", rec.sent, pySimIdentifyAPDUs)
	}
}

func TestIdentifySimVariants(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  sim.Config
		want card.Identity
		sent []string
	}{
		{
			name: "T0 GET RESPONSE",
			cfg:  sim.Config{T0GetResponse: true},
			want: card.Identity{EID: "89049032123451234512345678901235", ICCID: "8949440000001155314"},
			sent: []string{
				"00a4040410a0000005591010ffffffff8900000100", "00c0000030",
				"80e2910006bf3e035c015a", "80c0000015",
				"00a40000023f00", "00c0000022",
				"00a40000022fe2", "00c0000019",
				"00b0000000", "00b000000a",
			},
		},
		{
			name: "plain UICC, 20-digit ICCID",
			cfg:  sim.Config{EID: sim.NoEID, ICCID: "89490000000000000017", Protocol: sim.T1},
			want: card.Identity{ICCID: "89490000000000000017"},
			sent: []string{
				"00a4040410a0000005591010ffffffff8900000100",
				"00a40000023f00", "00a40000022fe2", "00b0000000",
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := sim.New(tc.cfg)
			rec := &recorder{t: c}
			id, err := card.Identify(context.Background(), rec)
			if err != nil {
				t.Fatal(err)
			}
			if id != tc.want {
				t.Errorf("Identify = %+v, want %+v", id, tc.want)
			}
			if strings.Join(rec.sent, " ") != strings.Join(tc.sent, " ") {
				t.Errorf("sent %v\nwant %v", rec.sent, tc.sent)
			}
		})
	}
}

func TestIdentifyTransportErrorKeepsPartial(t *testing.T) {
	c := sim.New(sim.Config{})
	boom := errors.New("link down")
	n := 0
	tr := transmitFunc(func(ctx context.Context, cmd []byte) ([]byte, error) {
		n++
		if n == 3 { // SELECT MF
			return nil, boom
		}
		return c.Transmit(ctx, cmd)
	})
	id, err := card.Identify(context.Background(), tr)
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want %v", err, boom)
	}
	if id.EID != "89049032123451234512345678901235" || id.ICCID != "" {
		t.Errorf("partial identity = %+v", id)
	}
}

type transmitFunc func(ctx context.Context, cmd []byte) ([]byte, error)

func (f transmitFunc) Transmit(ctx context.Context, cmd []byte) ([]byte, error) { return f(ctx, cmd) }
