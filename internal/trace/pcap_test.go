package trace

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestPcapGolden pins the bytes of one file: header and a SELECT MF
// packet. The expected bytes were computed independently of this package.
func TestPcapGolden(t *testing.T) {
	want := unhex(t, ""+
		"4d3cb2a1 0200 0400 00000000 00000000 00000400 65000000"+ // file header: ns magic, 2.4, snaplen 262144, LINKTYPE_RAW
		"00f15365 15cd5b07 35000000 35000000"+ // record: 1700000000 s, 123456789 ns, 53 bytes
		"4500 0035 0001 4000 40 11 3cb4 7f010001 7f000001"+ // IPv4 127.1.0.1 → 127.0.0.1, UDP
		"c000 1279 0021 0000"+ // UDP 49152 → 4729, length 33, no checksum
		"02 04 04 00 0000 00 00 00000000 00 00 00 00"+ // GSMTAP v2, 4 words, SIM, sub-type APDU
		"00a40004023f00 6120") // SELECT MF, SW 6120
	var buf bytes.Buffer
	p, err := NewPcapWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	ts := time.Unix(1700000000, 123456789)
	if err := p.WriteAPDU(ts, cardAddr(0), AppendSIMAPDU(nil, unhex(t, "00a40004023f00"), nil, 0x6120)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), want) {
		t.Errorf("pcap bytes\n got %x\nwant %x", buf.Bytes(), want)
	}
	if p.Written() != int64(len(want)) {
		t.Errorf("Written() = %d, want %d", p.Written(), len(want))
	}
}

func TestAppendSIMAPDU(t *testing.T) {
	tests := []struct {
		name, cmd, rsp string
		sw             uint16
		want           string
	}{
		{"case 1 gets P3=00", "80f20000", "", 0x9000, "80f20000 00 9000"},
		{"case 2", "00b000000a", "98001032547698103214", 0x9000, "00b000000a 98001032547698103214 9000"},
		{"case 3", "00a40004022fe2", "", 0x9000, "00a40004022fe2 9000"},
		{"case 4 loses Le", "00a40004023f0000", "", 0x6120, "00a40004023f00 6120"},
		{"extended as is", "00b00000000100", "aabb", 0x9000, "00b00000000100 aabb 9000"},
		{"malformed as is", "00a4000405", "", 0x6700, "00a4000405 6700"},
		{"too short as is", "00", "", 0x6d00, "00 6d00"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := AppendSIMAPDU(nil, unhex(t, tt.cmd), unhex(t, tt.rsp), tt.sw)
			if want := unhex(t, tt.want); !bytes.Equal(got, want) {
				t.Errorf("got %x, want %x", got, want)
			}
		})
	}
}

func TestWriteTooLarge(t *testing.T) {
	var buf bytes.Buffer
	p, err := NewPcapWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	n := buf.Len()
	err = p.WriteAPDU(time.Now(), cardAddr(0), make([]byte, maxPayload+1))
	if !errors.Is(err, ErrPacketTooLarge) {
		t.Fatalf("err = %v, want ErrPacketTooLarge", err)
	}
	if buf.Len() != n {
		t.Errorf("%d bytes written for a refused packet", buf.Len()-n)
	}
	if err := p.WriteAPDU(time.Now(), cardAddr(0), make([]byte, maxPayload)); err != nil {
		t.Errorf("largest payload: %v", err)
	}
}

type failWriter struct{ after int }

func (w *failWriter) Write(b []byte) (int, error) {
	if w.after <= 0 {
		return 0, errors.New("disk full")
	}
	n := min(len(b), w.after)
	w.after -= n
	if n < len(b) {
		return n, errors.New("disk full")
	}
	return n, nil
}

func TestPcapWriterErrors(t *testing.T) {
	if _, err := NewPcapWriter(&failWriter{}); err == nil {
		t.Error("NewPcapWriter on a failing writer: no error")
	}
	p, err := NewPcapWriter(&failWriter{after: pcapFileHeaderLen + 10})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.WriteAPDU(time.Now(), cardAddr(0), []byte{0, 0xa4, 0, 0, 0, 0x90, 0}); err == nil {
		t.Error("short write: no error")
	}
	if p.Written() != pcapFileHeaderLen+10 {
		t.Errorf("Written() = %d, want %d", p.Written(), pcapFileHeaderLen+10)
	}
}

func TestCardAddr(t *testing.T) {
	for n, want := range map[int]string{0: "127.1.0.1", 1: "127.1.0.2", 255: "127.1.1.0", 65533: "127.1.255.254", 65534: "127.1.0.1"} {
		if got := cardAddr(n).String(); got != want {
			t.Errorf("cardAddr(%d) = %s, want %s", n, got, want)
		}
	}
}

// packet is one decoded pcap record.
type packet struct {
	ts      time.Time
	src     netip.Addr
	payload []byte // after the GSMTAP header
}

// readPcap decodes a file this package wrote, checking every layer.
func readPcap(t testing.TB, path string) []packet {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return decodePcap(t, b)
}

func decodePcap(t testing.TB, b []byte) []packet {
	t.Helper()
	if len(b) < pcapFileHeaderLen || !bytes.Equal(b[:pcapFileHeaderLen], appendFileHeader(nil)) {
		t.Fatalf("bad pcap file header % x", b[:min(len(b), pcapFileHeaderLen)])
	}
	b = b[pcapFileHeaderLen:]
	var pkts []packet
	for len(b) > 0 {
		if len(b) < pcapRecordHeaderLen {
			t.Fatalf("truncated record header: %d bytes", len(b))
		}
		sec, ns := binary.LittleEndian.Uint32(b), binary.LittleEndian.Uint32(b[4:])
		incl, orig := int(binary.LittleEndian.Uint32(b[8:])), int(binary.LittleEndian.Uint32(b[12:]))
		b = b[pcapRecordHeaderLen:]
		if incl != orig || incl > len(b) || incl < ipv4HdrLen+udpHdrLen+gsmtapHdrLen {
			t.Fatalf("bad record lengths incl=%d orig=%d, %d bytes left", incl, orig, len(b))
		}
		p := b[:incl]
		b = b[incl:]
		if p[0] != 0x45 || p[9] != 17 || int(binary.BigEndian.Uint16(p[2:])) != incl || ipv4Checksum(p[:ipv4HdrLen]) != 0 {
			t.Fatalf("bad IPv4 header % x", p[:ipv4HdrLen])
		}
		u := p[ipv4HdrLen:]
		if binary.BigEndian.Uint16(u[2:]) != GSMTAPPort || int(binary.BigEndian.Uint16(u[4:])) != incl-ipv4HdrLen {
			t.Fatalf("bad UDP header % x", u[:udpHdrLen])
		}
		g := u[udpHdrLen:]
		if g[0] != gsmtapVersion || g[1] != gsmtapHdrWords || g[2] != gsmtapTypeSIM || g[12] != gsmtapSIMAPDU {
			t.Fatalf("bad GSMTAP header % x", g[:gsmtapHdrLen])
		}
		pkts = append(pkts, packet{
			ts:      time.Unix(int64(sec), int64(ns)),
			src:     netip.AddrFrom4([4]byte(p[12:16])),
			payload: bytes.Clone(g[gsmtapHdrLen:]),
		})
	}
	return pkts
}
