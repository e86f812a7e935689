package card_test

import (
	"context"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/card/sim"
)

// costMeter counts the APDUs and the bytes on the card's I/O line that a
// Transmitter sees.
type costMeter struct {
	t     card.Transmitter
	t0    bool
	apdus int
	bytes int
}

func (m *costMeter) Transmit(ctx context.Context, cmd []byte) ([]byte, error) {
	r, err := m.t.Transmit(ctx, cmd)
	m.apdus++
	m.bytes += len(cmd) + len(r)
	if m.t0 {
		m.bytes++ // the procedure byte (INS) before the data
	} else {
		m.bytes += 8 // T=1: prologue (3) and LRC (1) of two blocks
	}
	return r, err
}

// charTime is one character on the I/O line at 9600 bit/s: 12 etu (start
// bit, 8 data bits, parity, 2 guard etu) of 1/9600 s.
const charTime = 12.0 / 9600

// identificationCost is what identification costs on one card kind: the
// APDUs and line bytes of pySim's sequence and of ours.
type identificationCost struct {
	kind                   string
	pySimAPDUs, pySimBytes int
	apdus, bytes           int
}

// pySimIdentify is a test oracle: pySim's server identification as its
// source reads (CardClient.identify, xceive_apdu), written out plainly.
func pySimIdentify(t *testing.T, tr card.Transmitter) {
	t.Helper()
	xceive := func(cmd string) uint16 {
		c := mustUnhex(t, cmd)
		r, err := tr.Transmit(context.Background(), c)
		if err != nil {
			t.Fatal(err)
		}
		sw := uint16(r[len(r)-2])<<8 | uint16(r[len(r)-1])
		for sw>>8 == 0x61 || sw>>8 == 0x9f || sw>>8 == 0x62 || sw>>8 == 0x63 {
			c = []byte{c[0], 0xc0, 0x00, 0x00, byte(sw)}
			if r, err = tr.Transmit(context.Background(), c); err != nil {
				t.Fatal(err)
			}
			sw = uint16(r[len(r)-2])<<8 | uint16(r[len(r)-1])
		}
		if sw>>8 == 0x6c {
			if r, err = tr.Transmit(context.Background(), []byte{c[0], c[1], c[2], c[3], byte(sw)}); err != nil {
				t.Fatal(err)
			}
			sw = uint16(r[len(r)-2])<<8 | uint16(r[len(r)-1])
		}
		return sw
	}
	if xceive("00a4040410a0000005591010ffffffff8900000100") == 0x9000 {
		xceive("80e2910006bf3e035c015a")
	}
	if xceive("00a40000023f00") == 0x9000 && xceive("00a40000022fe2") == 0x9000 {
		xceive("00b0000000")
	}
}

// measure identifies a card of cfg with pySim's sequence and with ours.
func measure(t *testing.T, kind string, cfg sim.Config) identificationCost {
	t.Helper()
	m := &costMeter{t: sim.New(cfg), t0: cfg.T0GetResponse}
	if _, err := card.Identify(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	p := &costMeter{t: sim.New(cfg), t0: cfg.T0GetResponse}
	pySimIdentify(t, p)
	return identificationCost{kind: kind, pySimAPDUs: p.apdus, pySimBytes: p.bytes, apdus: m.apdus, bytes: m.bytes}
}

// TestIdentificationCost measures, per card kind, what our extensions
// (IMSI, alternative ISD-R AIDs) add to pySim's identification, in APDUs
// and in time on a 9600 bit/s line (bytes only: the card's own processing
// time per APDU comes on top). docs/protocol.md records the table this
// test logs; the APDU counts are checked here so that the table stays true.
func TestIdentificationCost(t *testing.T) {
	kinds := []struct {
		kind      string
		cfg       sim.Config
		wantExtra int
	}{
		{"eUICC without profile (the recorded card), T=1", sim.Config{Protocol: sim.T1}, 2},
		{"eUICC without profile, T=0", sim.Config{T0GetResponse: true}, 3},
		{"eUICC with a USIM profile, T=1", sim.Config{USIM: true, Protocol: sim.T1}, 3},
		{"eUICC with a USIM profile, T=0", sim.Config{USIM: true, T0GetResponse: true}, 4},
		{"UICC with USIM, T=1", sim.Config{EID: sim.NoEID, USIM: true, Protocol: sim.T1}, 6},
		{"UICC with USIM, T=0", sim.Config{EID: sim.NoEID, USIM: true, T0GetResponse: true}, 7},
		{"UICC with USIM, IMSI behind PIN, T=0", sim.Config{EID: sim.NoEID, USIM: true, IMSINeedsPIN: true, T0GetResponse: true}, 7},
		{"eSIM.me v2 eUICC with a USIM profile, T=0", sim.Config{ISDRAID: card.ISDRAlternatives[1], USIM: true, T0GetResponse: true}, 9},
	}
	var b strings.Builder
	b.WriteString("| card | pySim's sequence | ours | extra | extra time at 9600 bit/s |\n|---|---|---|---|---|\n")
	for _, k := range kinds {
		c := measure(t, k.kind, k.cfg)
		extra := c.apdus - c.pySimAPDUs
		if extra != k.wantExtra {
			t.Errorf("%s: %d extra APDUs, want %d", k.kind, extra, k.wantExtra)
		}
		fmt.Fprintf(&b, "| %s | %d APDUs, %d bytes | %d APDUs, %d bytes | %d APDUs, %d bytes | %.0f ms |\n",
			k.kind, c.pySimAPDUs, c.pySimBytes, c.apdus, c.bytes, extra, c.bytes-c.pySimBytes,
			float64(c.bytes-c.pySimBytes)*charTime*1000)
	}
	t.Logf("identification cost:\n%s", b.String())
}

func mustUnhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
