package card

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

func h(s string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		panic(err)
	}
	return b
}

var parseGood = []struct {
	in   string
	want Command
	cas  int
}{
	{"00a40000", Command{CLA: 0, INS: 0xa4}, 1},
	{"00b0000000", Command{INS: 0xb0, Ne: 256}, 2},
	{"00b000000a", Command{INS: 0xb0, Ne: 10}, 2},
	{"00a40000023f00", Command{INS: 0xa4, Data: h("3f00")}, 3},
	{"00a40004023f0000", Command{INS: 0xa4, P2: 4, Data: h("3f00"), Ne: 256}, 4},
	{"80e2910006bf3e035c015a", Command{CLA: 0x80, INS: 0xe2, P1: 0x91, Data: h("bf3e035c015a")}, 3},
	{"80E2910006bf3e035c015a00", Command{CLA: 0x80, INS: 0xe2, P1: 0x91, Data: h("bf3e035c015a"), Ne: 256}, 4},
	{"00b0000000 0000", Command{INS: 0xb0, Ne: 65536, Extended: true}, 2},
	{"00b0000000 0fa0", Command{INS: 0xb0, Ne: 4000, Extended: true}, 2},
	{"00d6000000 0002 abcd", Command{INS: 0xd6, Data: h("abcd"), Extended: true}, 3},
	{"00d6000000 0002 abcd 0000", Command{INS: 0xd6, Data: h("abcd"), Ne: 65536, Extended: true}, 4},
	{"00d6000000 0002 abcd 0101", Command{INS: 0xd6, Data: h("abcd"), Ne: 257, Extended: true}, 4},
	{"0001020301ff", Command{INS: 1, P1: 2, P2: 3, Data: h("ff")}, 3},
	{"0001020301ff01", Command{INS: 1, P1: 2, P2: 3, Data: h("ff"), Ne: 1}, 4},
}

func TestParseCommand(t *testing.T) {
	for _, tc := range parseGood {
		got, err := ParseCommand(h(tc.in))
		if err != nil {
			t.Errorf("%s: %v", tc.in, err)
			continue
		}
		if got.CLA != tc.want.CLA || got.INS != tc.want.INS || got.P1 != tc.want.P1 || got.P2 != tc.want.P2 ||
			!bytes.Equal(got.Data, tc.want.Data) || got.Ne != tc.want.Ne || got.Extended != tc.want.Extended {
			t.Errorf("%s: got %+v, want %+v", tc.in, got, tc.want)
		}
		if got.Case() != tc.cas {
			t.Errorf("%s: case %d, want %d", tc.in, got.Case(), tc.cas)
		}
		if b := got.Bytes(); !bytes.Equal(b, h(tc.in)) {
			t.Errorf("%s: Bytes() = %x", tc.in, b)
		}
	}
}

func TestParseCommandMalformed(t *testing.T) {
	for _, tc := range []struct{ in, msg string }{
		{"", "0 bytes, the header alone needs 4"},
		{"00a400", "3 bytes"},
		{"00a40000023f", "short Lc=2 needs 2 or 3 bytes after it, got 1"},
		{"00a40000023f000000", "short Lc=2 needs 2 or 3 bytes after it, got 4"},
		{"00b0000000 00", "two-byte extended length, got 1 byte"},
		{"00d6000000 0000 ab", "extended Lc=0000"},
		{"00d6000000 0002 ab", "extended Lc=2 needs 2 or 4 bytes after it, got 1"},
		{"00d6000000 0002 abcd 00", "extended Lc=2 needs 2 or 4 bytes after it, got 3"},
		{"00d6000000 0002 abcd 000000", "got 5"},
	} {
		_, err := ParseCommand(h(tc.in))
		if !errors.Is(err, ErrMalformedAPDU) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%q: err = %v, want ErrMalformedAPDU with %q", tc.in, err, tc.msg)
		}
	}
}

func TestCommandBytes(t *testing.T) {
	for _, tc := range []struct {
		c    Command
		want string
	}{
		{Command{INS: 0xb0, Ne: 256}, "00b0000000"},
		{Command{INS: 0xb0, Ne: 257}, "00b0000000 0101"},
		{Command{INS: 0xb0, Ne: 65536}, "00b0000000 0000"},
		{Command{INS: 0xd6, Data: make([]byte, 256)}, "00d6000000 0100" + strings.Repeat("00", 256)},
		{Command{INS: 0xd6, Data: make([]byte, 300), Ne: 256}, "00d6000000 012c" + strings.Repeat("00", 300) + "0100"},
		{Command{INS: 0xa4, Data: h("3f00"), Extended: true}, "00a4000000 0002 3f00"},
		{Command{INS: 0xa4}, "00a40000"},
	} {
		if got := tc.c.Bytes(); !bytes.Equal(got, h(tc.want)) {
			t.Errorf("%+v: Bytes() = %x, want %s", tc.c, got, tc.want)
		}
	}
	for _, c := range []Command{{Ne: -1}, {Ne: 65537}, {Data: make([]byte, 65536)}} {
		if c.Validate() == nil || c.Bytes() != nil {
			t.Errorf("Ne=%d Nc=%d: want a Validate error and nil Bytes", c.Ne, len(c.Data))
		}
	}
}

func FuzzParseCommand(f *testing.F) {
	for _, tc := range parseGood {
		f.Add(h(tc.in))
	}
	f.Add(h("00d6000000 0002 ab"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseCommand(b)
		if err != nil {
			if !errors.Is(err, ErrMalformedAPDU) {
				t.Fatalf("error %v does not wrap ErrMalformedAPDU", err)
			}
			return
		}
		if c.Case() < 1 || c.Case() > 4 {
			t.Fatalf("case %d", c.Case())
		}
		enc := c.Bytes()
		if !bytes.Equal(enc, b) {
			// The only non-canonical form is a short-encodable command
			// sent extended; re-encoding must still round-trip.
			c2, err := ParseCommand(enc)
			if err != nil || c2.Ne != c.Ne || !bytes.Equal(c2.Data, c.Data) {
				t.Fatalf("%x → %+v → %x → %+v, %v", b, c, enc, c2, err)
			}
		}
	})
}

func TestSplitResponse(t *testing.T) {
	data, sw, err := SplitResponse(h("989444000000115513f4 9000"))
	if err != nil || sw != 0x9000 || !bytes.Equal(data, h("989444000000115513f4")) {
		t.Errorf("got %x %04x %v", data, sw, err)
	}
	data, sw, err = SplitResponse(h("6a82"))
	if err != nil || sw != 0x6a82 || len(data) != 0 {
		t.Errorf("got %x %04x %v", data, sw, err)
	}
	for _, in := range [][]byte{nil, {0x90}} {
		if _, _, err := SplitResponse(in); !errors.Is(err, ErrShortResponse) {
			t.Errorf("%x: err = %v", in, err)
		}
	}
}

func FuzzSplitResponse(f *testing.F) {
	f.Add(h("9000"))
	f.Add(h("0102036a82"))
	f.Add([]byte{0x61})
	f.Fuzz(func(t *testing.T, b []byte) {
		data, sw, err := SplitResponse(b)
		if len(b) < 2 {
			if err == nil {
				t.Fatal("no error for a short response")
			}
			return
		}
		if err != nil || len(data) != len(b)-2 || sw != uint16(b[len(b)-2])<<8|uint16(b[len(b)-1]) {
			t.Fatalf("%x: %x %04x %v", b, data, sw, err)
		}
	})
}
