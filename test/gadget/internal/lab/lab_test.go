package lab

import (
	"bytes"
	"context"
	"encoding/hex"
	"testing"

	"github.com/wsrc-go/wsrc/card/atr"
	"github.com/wsrc-go/wsrc/card/sim"
	"github.com/wsrc-go/wsrc/ccid"
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

// TestRecordLine: the gadget's record lines parse back, long data cut.
func TestRecordLine(t *testing.T) {
	long := bytes.Repeat([]byte{0xAB}, RecordDataMax+5)
	for _, m := range []ccid.Message{
		{Type: ccid.PCToRDRIccPowerOn, Slot: 3, Seq: 200, Param: [3]byte{1, 0, 0}},
		{Type: ccid.PCToRDRXfrBlock, Seq: 7, Data: []byte{0xFF, 0x10, 0x96, 0x79}},
		{Type: ccid.PCToRDRXfrBlock, Seq: 8, Param: [3]byte{0, 1, 0}, Data: long},
	} {
		rx, ok := ParseRecord(RecordLine(m))
		if !ok || rx.Type != m.Type || rx.Slot != int(m.Slot) || rx.Seq != int(m.Seq) || rx.Len != len(m.Data) {
			t.Fatalf("%q: %+v %v", RecordLine(m), rx, ok)
		}
		want := hex.EncodeToString(m.Data)
		if len(m.Data) > RecordDataMax {
			want = hex.EncodeToString(m.Data[:RecordDataMax]) + "+"
		}
		if rx.Data != want || rx.Param != hex.EncodeToString(m.Param[:]) {
			t.Errorf("%q: data %q param %q", RecordLine(m), rx.Data, rx.Param)
		}
	}
	if _, ok := ParseRecord("log something"); ok {
		t.Error("a log line parsed as a record")
	}
	if st, ok := ParseStep(Step{"read-256", "9000"}.Line()); !ok || st.Name != "read-256" || st.Result != "9000" {
		t.Errorf("step round trip: %+v %v", st, ok)
	}
}
