package atr

import (
	"encoding/hex"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Known ATRs: the simulated UICC (T=0), its T=1 variant, QEMU's
// passthru card, and hand-made edge cases.
var parseCases = []struct {
	name       string
	atr        string
	protocols  []int
	fi, di     int
	iso        bool
	hist       int
	wi         int
	ifsc       int
	bwi, cwi   int
	crc        bool
	n          int
	specific   int // -1: no TA2
	implicit   bool
	classes    byte
	hasClasses bool
}{
	{name: "sim T=0", atr: "3b9f96801fc78031e073fe211b575352435653494da3",
		protocols: []int{0}, fi: 9, di: 6, iso: true, hist: 15, wi: 10, ifsc: 32, bwi: 4, cwi: 13,
		specific: -1, classes: 0x07, hasClasses: true},
	{name: "sim T=1", atr: "3b9f968131fe458031e073fe211b575352435653494d" + "fd",
		protocols: []int{1}, fi: 9, di: 6, iso: true, hist: 15, wi: 10, ifsc: 254, bwi: 4, cwi: 5, specific: -1},
	{name: "qemu passthru", atr: "3B9F96801FC78031A073BE21136743200718000001A5",
		protocols: []int{0}, fi: 9, di: 6, iso: true, hist: 15, wi: 10, ifsc: 32, bwi: 4, cwi: 13,
		specific: -1, classes: 0x07, hasClasses: true},
	{name: "minimal", atr: "3b00", protocols: []int{0}, fi: 1, di: 1, iso: true, wi: 10, ifsc: 32, bwi: 4, cwi: 13, specific: -1},
	{name: "inverse, TC1 and TC2", atr: "3f c0 ff 40 20", protocols: []int{0}, fi: 1, di: 1, iso: true,
		wi: 0x20, n: 255, ifsc: 32, bwi: 4, cwi: 13, specific: -1},
	{name: "T=1, CRC, specific mode T=1 implicit", atr: "3b 90 97 91 11 71 20 75 01" + "00",
		protocols: []int{1}, fi: 9, di: 7, iso: true, wi: 10, ifsc: 32, bwi: 7, cwi: 5, crc: true,
		specific: 1, implicit: true},
	{name: "RFU TA1", atr: "3b 10 7f", protocols: []int{0}, fi: 1, di: 1, iso: false, wi: 10, ifsc: 32, bwi: 4, cwi: 13, specific: -1},
	{name: "offers T=0 then T=1", atr: "3b 80 80 01 01", protocols: []int{0, 1}, fi: 1, di: 1, iso: true,
		wi: 10, ifsc: 32, bwi: 4, cwi: 13, specific: -1},
}

func fixTCK(t *testing.T, s string) []byte {
	b := unhex(t, s)
	if a, err := Parse(b); err == nil || !errors.Is(err, ErrTCK) || !a.HasTCK {
		return b
	}
	var x byte
	for _, c := range b[1 : len(b)-1] {
		x ^= c
	}
	b[len(b)-1] = x
	return b
}

func TestParse(t *testing.T) {
	for _, tc := range parseCases {
		t.Run(tc.name, func(t *testing.T) {
			b := fixTCK(t, tc.atr)
			a, err := Parse(b)
			if err != nil {
				t.Fatalf("Parse(%X): %v", b, err)
			}
			if got := a.Protocols(); !reflect.DeepEqual(got, tc.protocols) {
				t.Errorf("Protocols = %v, want %v", got, tc.protocols)
			}
			fi, di, ok := a.FiDi()
			if fi != tc.fi || di != tc.di || ok != tc.iso {
				t.Errorf("FiDi = %d %d %v, want %d %d %v", fi, di, ok, tc.fi, tc.di, tc.iso)
			}
			if len(a.Historical) != tc.hist {
				t.Errorf("%d historical bytes, want %d", len(a.Historical), tc.hist)
			}
			if a.WI() != tc.wi {
				t.Errorf("WI = %d, want %d", a.WI(), tc.wi)
			}
			if a.IFSC() != tc.ifsc {
				t.Errorf("IFSC = %d, want %d", a.IFSC(), tc.ifsc)
			}
			if bwi, cwi := a.T1Waiting(); bwi != tc.bwi || cwi != tc.cwi {
				t.Errorf("BWI/CWI = %d/%d, want %d/%d", bwi, cwi, tc.bwi, tc.cwi)
			}
			if a.CRC() != tc.crc {
				t.Errorf("CRC = %v", a.CRC())
			}
			if a.ExtraGuardTime() != tc.n {
				t.Errorf("N = %d, want %d", a.ExtraGuardTime(), tc.n)
			}
			p, impl, _, present := a.SpecificMode()
			if (tc.specific < 0) == present || (present && (p != tc.specific || impl != tc.implicit)) {
				t.Errorf("SpecificMode = %d %v %v, want %d %v", p, impl, present, tc.specific, tc.implicit)
			}
			cl, ok := a.Classes()
			if cl != tc.classes || ok != tc.hasClasses {
				t.Errorf("Classes = %x %v", cl, ok)
			}
			if a.DefaultProtocol() != tc.protocols[0] {
				t.Errorf("DefaultProtocol = %d", a.DefaultProtocol())
			}
			if s := a.String(); !strings.HasPrefix(s, strings.ToUpper(hex.EncodeToString(b))) {
				t.Errorf("String = %q", s)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ name, atr, want string }{
		{"empty", "", "at least TS and T0"},
		{"TS only", "3b", "at least TS and T0"},
		{"bad TS", "3a00", "TS=3A"},
		{"interface bytes cut", "3bf0", "cut short"},
		{"historical cut", "3b02 41", "historical bytes announced"},
		{"extra byte, T=0 only", "3b00 00", "1 bytes after"},
		{"TCK missing", "3b80 01", "TCK missing"},
		{"two extra bytes", "3b80 01 00 00", "2 bytes after"},
		{"too long", "3b0f" + strings.Repeat("00", 32), "at most 33"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := Parse(unhex(t, tc.atr))
			if err == nil || !errors.Is(err, ErrMalformed) || a != nil {
				t.Fatalf("Parse = %v, %v; want ErrMalformed", a, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
		})
	}
}

func TestParseBadTCK(t *testing.T) {
	b := unhex(t, "3b9f968131fe458031e073fe211b575352435653494d00")
	a, err := Parse(b)
	if !errors.Is(err, ErrTCK) || a == nil {
		t.Fatalf("Parse = %v, %v; want the ATR and ErrTCK", a, err)
	}
	if a.IFSC() != 254 {
		t.Errorf("IFSC = %d", a.IFSC())
	}
}

func TestParseCopies(t *testing.T) {
	b := unhex(t, "3b0141")
	a, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	b[2] = 0
	if a.Historical[0] != 0x41 {
		t.Error("Parse aliases its input")
	}
}

func TestBaudRate(t *testing.T) {
	for _, tc := range []struct {
		ta1   byte
		clock int
		want  int
	}{
		{0x11, 4000, 10752},
		{0x96, 4000, 250000},
		{0x96, 2500, 156250},
		{0x18, 4800, 154838},
		{0x97, 4800, 600000},
		{0x7f, 4000, 0},
		{0x10, 4000, 0},
	} {
		if got := BaudRate(tc.ta1, tc.clock); got != tc.want {
			t.Errorf("BaudRate(%02X, %d) = %d, want %d", tc.ta1, tc.clock, got, tc.want)
		}
	}
}

func TestMustParsePanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("no panic")
		}
	}()
	MustParse("3a00")
}

func FuzzParse(f *testing.F) {
	for _, tc := range parseCases {
		f.Add(unhex(f, tc.atr))
	}
	f.Add([]byte{0x3b, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := Parse(b)
		if err != nil && !errors.Is(err, ErrTCK) {
			if a != nil {
				t.Fatal("ATR returned with a structural error")
			}
			return
		}
		if len(a.Groups) == 0 || len(a.Historical) != int(b[1]&0x0F) {
			t.Fatalf("inconsistent parse of %X", b)
		}
		_ = a.String()
		_, _, _ = a.FiDi()
		_ = a.IFSC()
		_, _ = a.T1Waiting()
		_ = a.WI()
		_, _ = a.Classes()
		_ = a.CRC()
		if len(a.Protocols()) == 0 {
			t.Fatal("no protocol")
		}
	})
}
