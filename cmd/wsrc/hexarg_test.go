package main

import (
	"encoding/hex"
	"strings"
	"testing"

	"github.com/wsrc-go/wsrc/client"
)

var apduCases = []struct {
	in, want, err string
}{
	{"00a40004023f00", "00a40004023f00", ""},
	{"00A4 0004\t02:3F:00", "00a40004023f00", ""},
	{"  00 a4 00 04  ", "00a40004", ""},
	{"00:a4:00:04:", "00a40004", ""},
	{"", "", "empty APDU"},
	{" : ", "", "empty APDU"},
	{"00a400", "", "too short: 3 bytes, an APDU has at least 4 (CLA INS P1 P2)"},
	{"00a4000", "", "odd number of hex digits (7)"},
	{"0 0a40004", "", "separator ' ' splits a byte at character 2"},
	{"00a4:0:004", "", "separator ':' splits a byte at character 7"},
	{"00a4g004", "", "'g' at character 5 is not a hex digit"},
	{"0x00a40004", "", "'x' at character 2 is not a hex digit"},
	{"00a4é004", "", "'é' at character 5 is not a hex digit"},
	{"00a4\n0004", "", "'\\n' at character 5 is not a hex digit"},
	{"00a4\xff0004", "", "'\ufffd' at character 5 is not a hex digit"},
	{strings.Repeat("00", client.MaxCommandLen), strings.Repeat("00", client.MaxCommandLen), ""},
	{strings.Repeat("00", client.MaxCommandLen+1), "", "too long: 65545 bytes, an APDU has at most 65544"},
}

func TestParseAPDU(t *testing.T) {
	for _, c := range apduCases {
		got, err := parseAPDU(c.in)
		if c.err != "" {
			if err == nil || err.Error() != c.err {
				t.Errorf("parseAPDU(%.40q) error %v, want %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil || hex.EncodeToString(got) != c.want {
			t.Errorf("parseAPDU(%.40q) = %x, %v; want %s", c.in, got, err, c.want)
		}
	}
}

func FuzzParseAPDU(f *testing.F) {
	for _, c := range apduCases {
		if len(c.in) < 1000 {
			f.Add(c.in)
		}
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := parseAPDU(s)
		if err != nil {
			if got != nil {
				t.Fatalf("parseAPDU(%q) returned bytes with error %v", s, err)
			}
			return
		}
		if len(got) < 4 || len(got) > client.MaxCommandLen {
			t.Fatalf("parseAPDU(%q) accepted %d bytes", s, len(got))
		}
		// What was accepted is the input without its separators.
		digits := strings.NewReplacer(" ", "", "\t", "", ":", "").Replace(s)
		if hex.EncodeToString(got) != strings.ToLower(digits) {
			t.Fatalf("parseAPDU(%q) = %x", s, got)
		}
		again, err := parseAPDU(hex.EncodeToString(got))
		if err != nil || string(again) != string(got) {
			t.Fatalf("round trip of %x: %x, %v", got, again, err)
		}
	})
}

func TestParseHexID(t *testing.T) {
	for _, c := range []struct{ in, want, err string }{
		{"3B:9F:96", "3b9f96", ""},
		{"3b 9f", "3b9f", ""},
		{"3b9", "", "want an even, non-zero number of hex digits, got 3"},
		{"", "", "want an even, non-zero number of hex digits, got 0"},
		{"3bzz", "", "'z' at character 3 is not a hex digit"},
	} {
		got, err := parseHexID(c.in)
		if (c.err == "" && (err != nil || got != c.want)) || (c.err != "" && (err == nil || err.Error() != c.err)) {
			t.Errorf("parseHexID(%q) = %q, %v; want %q, %q", c.in, got, err, c.want, c.err)
		}
	}
}

func FuzzParseHexID(f *testing.F) {
	for _, s := range []string{"3B:9F:96", "3b 9f", "3b9", "", "3bzz", "é"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := parseHexID(s)
		if err != nil {
			return
		}
		if _, err := hex.DecodeString(got); err != nil || got != strings.ToLower(got) || len(got) == 0 {
			t.Fatalf("parseHexID(%q) = %q", s, got)
		}
	})
}
