package t1

import (
	"bytes"
	"errors"
	"testing"
)

// crcBitwise is the CRC computed bit by bit, independent of the table.
func crcBitwise(p []byte) uint16 {
	v := uint16(0xFFFF)
	for _, b := range p {
		v ^= uint16(b)
		for range 8 {
			if v&1 != 0 {
				v = v>>1 ^ 0x8408
			} else {
				v >>= 1
			}
		}
	}
	return v
}

func TestCRC(t *testing.T) {
	// The catalogue check value of CRC-16/MCRF4XX, which is what libccid's
	// csum_crc_compute computes.
	if got := CRC([]byte("123456789")); got != 0x6F91 {
		t.Errorf(`CRC("123456789") = %04X, want 6F91`, got)
	}
	if got := CRC(nil); got != 0xFFFF {
		t.Errorf("CRC(nil) = %04X, want FFFF", got)
	}
	// Entries of libccid's crctab (src/openct/checksum.c).
	for i, want := range map[int]uint16{1: 0x1189, 2: 0x2312, 16: 0x1081, 128: 0x8408, 192: 0xC60C, 200: 0x4A44, 255: 0x0F78} {
		if crcTable[i] != want {
			t.Errorf("crcTable[%d] = %04X, want %04X", i, crcTable[i], want)
		}
	}
	for n := range 300 {
		p := pattern(n, byte(n))
		if CRC(p) != crcBitwise(p) {
			t.Fatalf("CRC of %d bytes differs from the bitwise computation", n)
		}
	}
	// A T=1 block carries the CRC high byte first.
	blk := appendBlock(nil, 0, 0, []byte{0x00, 0xB0, 0x00, 0x00, 0x02}, true)
	if want := []byte{0x00, 0x00, 0x05, 0x00, 0xB0, 0x00, 0x00, 0x02, 0x2A, 0x85}; !bytes.Equal(blk, want) {
		t.Errorf("block with CRC %X, want %X", blk, want)
	}
}

func TestLRC(t *testing.T) {
	if got := LRC([]byte{0x00, 0x00, 0x05, 0x00, 0xB0, 0x00, 0x00, 0x02}); got != 0xB7 {
		t.Errorf("LRC = %02X, want B7", got)
	}
	if LRC(nil) != 0 {
		t.Error("LRC(nil) != 0")
	}
}

func TestParseBlock(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		crc     bool
		maxINF  int
		wantPCB byte
		wantINF string
		edc     bool // want an EDC error
		bad     bool // want another error
	}{
		{"I-block", "00 00 04 12349000 B2", false, 254, 0x00, "12349000", false, false},
		{"I-block chained", "00 60 02 1234 44", false, 254, 0x60, "1234", false, false},
		{"empty I-block", "00 00 00 00", false, 254, 0x00, "", false, false},
		{"R-block", "00 90 00 90", false, 254, 0x90, "", false, false},
		{"R-block EDC error", "00 81 00 81", false, 254, 0x81, "", false, false},
		{"S(WTX request)", "00 C3 01 03 C1", false, 254, 0xC3, "03", false, false},
		{"S(IFS response) 254", "00 E1 01 FE 1E", false, 254, 0xE1, "FE", false, false},
		{"CRC", "00 00 05 00B0000002 2A85", true, 254, 0x00, "00B0000002", false, false},
		{"CRC wrong", "00 00 05 00B0000002 852A", true, 254, 0, "", true, false},
		{"LRC wrong", "00 00 04 12349000 B3", false, 254, 0, "", true, false},
		{"LEN at IFS", "00 00 04 12349000 B2", false, 4, 0x00, "12349000", false, false},
		{"LEN above IFS", "00 00 04 12349000 B2", false, 3, 0, "", false, true},
		{"LEN 0xFF", "00 00 FF 00", false, 254, 0, "", false, true},
		{"short", "00 00 00", true, 254, 0, "", false, true},
		{"trailing byte", "00 90 00 90 00", false, 254, 0, "", false, true},
		{"I-block RFU bit", "00 10 00 10", false, 254, 0, "", false, true},
		{"R-block bit 6", "00 A0 00 A0", false, 254, 0, "", false, true},
		{"R-block error 3", "00 83 00 83", false, 254, 0, "", false, true},
		{"R-block error 4", "00 84 00 84", false, 254, 0, "", false, true},
		{"S(RESYNCH) with INF", "00 C0 01 00 C1", false, 254, 0, "", false, true},
		{"S-block type 4 (VPP error)", "00 E4 00 E4", false, 254, 0, "", false, true},
		{"S(IFS) 0", "00 C1 01 00 C0", false, 254, 0, "", false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := parseBlock(unhex(t, tt.in), tt.crc, tt.maxINF)
			var be *BlockError
			switch {
			case tt.edc || tt.bad:
				if !errors.As(err, &be) || be.EDC != tt.edc || !errors.Is(err, ErrProtocol) {
					t.Fatalf("error %v (%#v), want a BlockError with EDC %v", err, be, tt.edc)
				}
			case err != nil:
				t.Fatal(err)
			case b.pcb != tt.wantPCB || !bytes.Equal(b.inf, unhex(t, tt.wantINF)):
				t.Errorf("parsed PCB %02X INF %X, want %02X %s", b.pcb, b.inf, tt.wantPCB, tt.wantINF)
			}
		})
	}
}

func TestDescribePCB(t *testing.T) {
	for pcb, want := range map[byte]string{
		0x00: "I(0,0)", 0x60: "I(1,1)", 0x90: "R(1)", 0x81: "R(0) EDC error", 0x92: "R(1) other error",
		0xC0: "S(RESYNCH request)", 0xE1: "S(IFS response)", 0xC2: "S(ABORT request)", 0xE3: "S(WTX response)",
		0xC9: "S(0x09 request)",
	} {
		if got := describePCB(pcb); got != want {
			t.Errorf("describePCB(%02X) = %q, want %q", pcb, got, want)
		}
	}
}

// FuzzParseBlock: parsing never panics, and whatever parses encodes back
// to the same bytes.
func FuzzParseBlock(f *testing.F) {
	for _, s := range []string{
		"00 00 04 12349000 B2", "00 90 00 90", "00 C3 01 03 C1", "00 E1 01 FE 1E",
		"00 00 05 00B0000002 2A85", "00 00 FF 00", "", "00",
	} {
		f.Add(unhex(f, s), false, 254)
		f.Add(unhex(f, s), true, 32)
	}
	f.Fuzz(func(t *testing.T, in []byte, crc bool, maxINF int) {
		b, err := parseBlock(in, crc, maxINF)
		if err != nil {
			var be *BlockError
			if !errors.As(err, &be) {
				t.Fatalf("error %T %v is not a *BlockError", err, err)
			}
			return
		}
		if len(b.inf) > maxINF || len(b.inf) > MaxINF {
			t.Fatalf("accepted LEN %d with IFS %d", len(b.inf), maxINF)
		}
		if out := appendBlock(nil, b.nad, b.pcb, b.inf, crc); !bytes.Equal(out, in) {
			t.Fatalf("re-encoded %X, parsed from %X", out, in)
		}
	})
}
