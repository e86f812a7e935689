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

// imsiSteps is what the IMSI step sends to the recorded card (no USIM
// listed in its one EF.DIR record): two READ RECORDs by SFI.
var imsiSteps = []string{"00b201f400", "00b202f400"}

// altISDR are the SELECTs of the alternative ISD-Rs, in order.
var altISDR = []string{
	"00a4040410a0000005591010ffffffff890005050000",
	"00a4040410a000000559101000000000890000030000",
	"00a4040410a0000005591010ffffffff890000017700",
}

// TestIdentifyDefaultSimSendsPySimSequence: pySim's sequence comes
// first and unchanged; the IMSI step follows.
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
	if got, want := strings.Join(rec.sent, " "), strings.Join(append(pySimIdentifyAPDUs, imsiSteps...), " "); got != want {
		t.Errorf("sent %v\nwant %v", got, want)
	}
}

func cat(parts ...[]string) []string {
	var out []string
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func TestIdentifySimVariants(t *testing.T) {
	pySimT0 := []string{
		"00a4040410a0000005591010ffffffff8900000100", "00c0000030",
		"80e2910006bf3e035c015a", "80c0000015",
		"00a40000023f00", "00c0000022",
		"00a40000022fe2", "00c0000019",
		"00b0000000", "00b000000a",
	}
	plain := []string{"00a4040410a0000005591010ffffffff8900000100", "00a40000023f00", "00a40000022fe2", "00b0000000"}
	usim := []string{"00b201f400", "00a4040c10a0000000871002ffffffff8907090000", "00b0870009"}
	const eid, iccid, imsi = sim.DefaultEID, sim.DefaultICCID, sim.DefaultIMSI
	for _, tc := range []struct {
		name string
		cfg  sim.Config
		want card.Identity
		sent []string
	}{
		{
			name: "T0 GET RESPONSE",
			cfg:  sim.Config{T0GetResponse: true},
			want: card.Identity{EID: eid, ICCID: iccid},
			sent: cat(pySimT0, []string{"00b201f400", "00b201f426", "00b202f400"}),
		},
		{
			name: "plain UICC, 20-digit ICCID",
			cfg:  sim.Config{EID: sim.NoEID, ICCID: "89490000000000000017", Protocol: sim.T1},
			want: card.Identity{ICCID: "89490000000000000017"},
			sent: cat(plain, imsiSteps, altISDR),
		},
		{
			name: "eUICC with a USIM profile",
			cfg:  sim.Config{USIM: true},
			want: card.Identity{EID: eid, ICCID: iccid, IMSI: imsi},
			sent: cat(pySimIdentifyAPDUs, usim),
		},
		{
			name: "eUICC with a USIM profile, T=0",
			cfg:  sim.Config{USIM: true, T0GetResponse: true},
			want: card.Identity{EID: eid, ICCID: iccid, IMSI: imsi},
			sent: cat(pySimT0, []string{"00b201f400", "00b201f426", "00a4040c10a0000000871002ffffffff8907090000", "00b0870009"}),
		},
		{
			name: "UICC with USIM",
			cfg:  sim.Config{EID: sim.NoEID, USIM: true},
			want: card.Identity{ICCID: iccid, IMSI: imsi},
			sent: cat(plain, usim, altISDR),
		},
		{
			name: "UICC whose IMSI wants a PIN",
			cfg:  sim.Config{EID: sim.NoEID, USIM: true, IMSINeedsPIN: true},
			want: card.Identity{ICCID: iccid},
			sent: cat(plain, usim, altISDR),
		},
		{
			name: "5ber ISD-R",
			cfg:  sim.Config{ISDRAID: card.ISDRAlternatives[0], USIM: true},
			want: card.Identity{EID: eid, ICCID: iccid, IMSI: imsi},
			sent: cat(plain, usim, altISDR[:1], []string{"80e2910006bf3e035c015a"}),
		},
		{
			name: "eSIM.me v2 ISD-R",
			cfg:  sim.Config{ISDRAID: card.ISDRAlternatives[1]},
			want: card.Identity{EID: eid, ICCID: iccid},
			sent: cat(plain, imsiSteps, altISDR[:2], []string{"80e2910006bf3e035c015a"}),
		},
		{
			name: "XeSIM ISD-R",
			cfg:  sim.Config{ISDRAID: card.ISDRAlternatives[2]},
			want: card.Identity{EID: eid, ICCID: iccid},
			sent: cat(plain, imsiSteps, altISDR, []string{"80e2910006bf3e035c015a"}),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := sim.New(tc.cfg)
			rec := &recorder{t: c}
			id, err := card.Identify(context.Background(), rec)
			if err != nil {
				t.Fatal(err)
			}
			if id != tc.want || id != c.Identity() {
				t.Errorf("Identify = %+v, want %+v (sim: %+v)", id, tc.want, c.Identity())
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
