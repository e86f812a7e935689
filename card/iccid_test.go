package card

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

var iccidCases = []struct{ ef, iccid string }{
	{"989444000000115513f4", "8949440000001155314"}, // the recorded card
	{"98940000000000000071", "89490000000000000017"},
	{"ffffffffffffffffffff", ""},
	{"", ""},
	{"98f4", "894"},
	{"9a4b", "a9b4"},
}

func TestDecodeICCID(t *testing.T) {
	for _, tc := range iccidCases {
		if got := DecodeICCID(h(tc.ef)); got != tc.iccid {
			t.Errorf("DecodeICCID(%s) = %q, want %q", tc.ef, got, tc.iccid)
		}
	}
	// pySim's dec_iccid strips 'f' from both ends.
	if got := DecodeICCID(h("9f8444")); got != "94844" {
		t.Errorf("leading f: %q", got)
	}
}

func TestEncodeICCID(t *testing.T) {
	for _, tc := range []struct{ iccid, ef string }{
		{"8949440000001155314", "989444000000115513f4"},
		{"8949440000001155314F", "989444000000115513f4"},
		{"89490000000000000017", "98940000000000000071"},
		{"1", "f1ffffffffffffffffff"},
	} {
		got, err := EncodeICCID(tc.iccid)
		if err != nil || !bytes.Equal(got, h(tc.ef)) {
			t.Errorf("EncodeICCID(%q) = %x, %v; want %s", tc.iccid, got, err, tc.ef)
		}
	}
	for _, bad := range []string{"", "894944000000115531400", "89x"} {
		if _, err := EncodeICCID(bad); !errors.Is(err, ErrBadICCID) {
			t.Errorf("EncodeICCID(%q): err = %v", bad, err)
		}
	}
}

func TestNormalizeICCID(t *testing.T) {
	for in, want := range map[string]string{
		"8949440000001155314":  "8949440000001155314",
		"8949440000001155314F": "8949440000001155314",
		"8949440000001155314f": "8949440000001155314",
		"ABCDEF":               "abcde",
		"f89":                  "89",
		"":                     "",
	} {
		if got := NormalizeICCID(in); got != want {
			t.Errorf("NormalizeICCID(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzDecodeICCID(f *testing.F) {
	for _, tc := range iccidCases {
		f.Add(h(tc.ef))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		s := DecodeICCID(b)
		// One form: what DecodeICCID gives is already normalised, so an
		// ICCID a user copies from the list matches.
		if NormalizeICCID(s) != s {
			t.Fatalf("DecodeICCID(% x) = %q, which NormalizeICCID changes to %q", b, s, NormalizeICCID(s))
		}
		if len(s) > 2*len(b) || strings.HasPrefix(s, "f") || strings.HasSuffix(s, "f") {
			t.Fatalf("%x → %q", b, s)
		}
		if len(b) == 10 && s != "" && !strings.Contains(s, "f") {
			enc, err := EncodeICCID(s)
			if err != nil {
				t.Fatalf("re-encoding %q: %v", s, err)
			}
			if DecodeICCID(enc) != s {
				t.Fatalf("%q does not round-trip: %x", s, enc)
			}
		}
	})
}

var imsiCases = []struct{ ef, imsi string }{
	{"080910101032547698", "001010123456789"},
	{"0861020000000000f0", "62000000000000"}, // even: 14 digits
	{"08091010103254769800", "001010123456789"},
	{"0809101010325476f8ff", "00101012345678"},
}

func TestDecodeIMSI(t *testing.T) {
	for _, tc := range imsiCases {
		got, err := DecodeIMSI(h(tc.ef))
		if err != nil || got != tc.imsi {
			t.Errorf("DecodeIMSI(%s) = %q, %v; want %q", tc.ef, got, err, tc.imsi)
		}
	}
	for _, bad := range []string{"", "08", "00ffff", "09091010103254769811", "0809101010", "02a1ff", "01ff"} {
		if _, err := DecodeIMSI(h(bad)); !errors.Is(err, ErrBadIMSI) {
			t.Errorf("DecodeIMSI(%s): err = %v", bad, err)
		}
	}
}

func TestEncodeIMSI(t *testing.T) {
	for _, tc := range []struct{ imsi, ef string }{
		{"001010123456789", "080910101032547698"},
		{"62000000000000", "0861020000000000f0"},
		{"1", "0119ffffffffffffff"},
	} {
		got, err := EncodeIMSI(tc.imsi)
		if err != nil || !bytes.Equal(got, h(tc.ef)) {
			t.Errorf("EncodeIMSI(%q) = %x, %v; want %s", tc.imsi, got, err, tc.ef)
		}
		back, err := DecodeIMSI(got)
		if err != nil || back != tc.imsi {
			t.Errorf("round trip %q: %q %v", tc.imsi, back, err)
		}
	}
	for _, bad := range []string{"", "0010101234567890", "00101a"} {
		if _, err := EncodeIMSI(bad); !errors.Is(err, ErrBadIMSI) {
			t.Errorf("EncodeIMSI(%q): err = %v", bad, err)
		}
	}
}

func FuzzDecodeIMSI(f *testing.F) {
	for _, tc := range imsiCases {
		f.Add(h(tc.ef))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := DecodeIMSI(b)
		if err != nil {
			if !errors.Is(err, ErrBadIMSI) {
				t.Fatalf("error %v does not wrap ErrBadIMSI", err)
			}
			return
		}
		if s == "" || len(s) > 15 || strings.Trim(s, "0123456789") != "" {
			t.Fatalf("%x → %q", b, s)
		}
	})
}
