package trace

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"time"
)

// pcap file format (classic libpcap, pcap-savefile(5)), written by hand:
// the file is a 24-byte header followed by records, each a 16-byte record
// header and the packet. Timestamps have nanosecond resolution (the magic
// number says so); every field is little-endian as the magic shows.
const (
	pcapMagicNanos = 0xa1b23c4d // nanosecond-resolution classic pcap
	pcapVersionMaj = 2
	pcapVersionMin = 4
	pcapSnapLen    = 262144
	// LinkTypeRaw is LINKTYPE_RAW: each packet starts with its IPv4 header.
	LinkTypeRaw = 101

	pcapFileHeaderLen   = 24
	pcapRecordHeaderLen = 16
)

// GSMTAP (libosmocore include/osmocom/core/gsmtap.h): a 16-byte header in
// front of the payload, carried in UDP to the IANA-assigned port 4729.
// Wireshark's gsmtap dissector hands type SIM to the gsm_sim dissector,
// which reads the payload as SIMtrace emits it: CLA INS P1 P2 P3, the
// command data, the response data, SW1 SW2.
const (
	GSMTAPPort     = 4729
	gsmtapVersion  = 2
	gsmtapHdrWords = 4 // hdr_len counts 32-bit words: 16 bytes
	gsmtapHdrLen   = 4 * gsmtapHdrWords
	gsmtapTypeSIM  = 0x04
	// Sub-types of GSMTAP_TYPE_SIM.
	// The ATR sub-type (0x01) is not written: Wireshark 4.0 (Debian 12)
	// dissects every SIM sub-type as an APDU and shows an ATR as garbage.
	gsmtapSIMAPDU = 0x00 // a complete APDU: command and response

	ipv4HdrLen = 20
	udpHdrLen  = 8
	// srcPort is the UDP source port of every packet (any ephemeral
	// port would do; the dissector keys on the destination port).
	srcPort = 49152
	// maxPayload keeps IPv4's 16-bit total length in range.
	maxPayload = 65535 - ipv4HdrLen - udpHdrLen - gsmtapHdrLen
)

// dstAddr is the destination of every packet: where a GSMTAP listener
// would sit.
var dstAddr = netip.AddrFrom4([4]byte{127, 0, 0, 1})

// ErrPacketTooLarge is returned for a payload that no IPv4 packet can carry.
var ErrPacketTooLarge = errors.New("payload does not fit in one IPv4 packet")

// PcapWriter writes GSMTAP-over-UDP-over-IPv4 packets to a pcap stream
// (LINKTYPE_RAW, nanosecond timestamps) that Wireshark and tshark decode
// as "GSM SIM". It is not safe for concurrent use; the Tracer gives each
// file one owner.
type PcapWriter struct {
	w   io.Writer
	buf []byte // reused per packet
	id  uint16 // IPv4 identification, incremented per packet
	n   int64  // bytes written, header included
}

// NewPcapWriter writes the pcap file header to w and returns a writer for
// the packets that follow.
func NewPcapWriter(w io.Writer) (*PcapWriter, error) {
	p := &PcapWriter{w: w}
	if err := p.writeAll(appendFileHeader(nil)); err != nil {
		return nil, fmt.Errorf("writing pcap file header: %w", err)
	}
	return p, nil
}

// appendPcapWriter returns a writer that appends packets to a stream that
// already holds a file header of n bytes' worth of content.
func appendPcapWriter(w io.Writer, n int64) *PcapWriter {
	return &PcapWriter{w: w, n: n}
}

// appendFileHeader appends the 24-byte pcap file header.
func appendFileHeader(b []byte) []byte {
	b = binary.LittleEndian.AppendUint32(b, pcapMagicNanos)
	b = binary.LittleEndian.AppendUint16(b, pcapVersionMaj)
	b = binary.LittleEndian.AppendUint16(b, pcapVersionMin)
	b = binary.LittleEndian.AppendUint32(b, 0) // thiszone
	b = binary.LittleEndian.AppendUint32(b, 0) // sigfigs
	b = binary.LittleEndian.AppendUint32(b, pcapSnapLen)
	b = binary.LittleEndian.AppendUint32(b, LinkTypeRaw)
	return b
}

// Written returns the number of bytes written so far, file header included.
func (p *PcapWriter) Written() int64 { return p.n }

// WriteAPDU writes one GSMTAP SIM APDU packet. payload is what the gsm_sim
// dissector reads (see AppendSIMAPDU). src tells cards apart in a file
// that holds several: it becomes the packet's IPv4 source address.
func (p *PcapWriter) WriteAPDU(ts time.Time, src netip.Addr, payload []byte) error {
	return p.writePacket(ts, src, gsmtapSIMAPDU, payload)
}

func (p *PcapWriter) writePacket(ts time.Time, src netip.Addr, subType byte, payload []byte) error {
	if len(payload) > maxPayload {
		return fmt.Errorf("%w: %d bytes, at most %d", ErrPacketTooLarge, len(payload), maxPayload)
	}
	if !src.Is4() {
		src = dstAddr
	}
	p.id++
	b := appendRecord(p.buf[:0], ts, src, p.id, subType, payload)
	p.buf = b
	return p.writeAll(b)
}

func (p *PcapWriter) writeAll(b []byte) error {
	n, err := p.w.Write(b)
	p.n += int64(n)
	if err == nil && n < len(b) {
		err = io.ErrShortWrite
	}
	return err
}

// appendRecord appends a pcap record: record header, IPv4, UDP, GSMTAP,
// payload.
func appendRecord(b []byte, ts time.Time, src netip.Addr, id uint16, subType byte, payload []byte) []byte {
	pktLen := ipv4HdrLen + udpHdrLen + gsmtapHdrLen + len(payload)
	ns := ts.UnixNano()
	if ns < 0 {
		ns = 0
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(ns/1e9))
	b = binary.LittleEndian.AppendUint32(b, uint32(ns%1e9))
	b = binary.LittleEndian.AppendUint32(b, uint32(pktLen)) // incl_len
	b = binary.LittleEndian.AppendUint32(b, uint32(pktLen)) // orig_len

	// IPv4 header (RFC 791), no options.
	ip := len(b)
	s, d := src.As4(), dstAddr.As4()
	b = append(b,
		0x45, 0x00, // version 4, IHL 5; DSCP/ECN 0
		byte(pktLen>>8), byte(pktLen),
		byte(id>>8), byte(id),
		0x40, 0x00, // don't fragment, offset 0
		64, 17, // TTL, protocol UDP
		0, 0, // checksum, filled in below
	)
	b = append(b, s[:]...)
	b = append(b, d[:]...)
	binary.BigEndian.PutUint16(b[ip+10:], ipv4Checksum(b[ip:ip+ipv4HdrLen]))

	// UDP header (RFC 768); checksum 0 = none, which IPv4 allows.
	udpLen := udpHdrLen + gsmtapHdrLen + len(payload)
	b = binary.BigEndian.AppendUint16(b, srcPort)
	b = binary.BigEndian.AppendUint16(b, GSMTAPPort)
	b = binary.BigEndian.AppendUint16(b, uint16(udpLen))
	b = binary.BigEndian.AppendUint16(b, 0)

	// GSMTAP header: version, hdr_len, type, timeslot; arfcn (2),
	// signal_dbm, snr_db; frame_number (4); sub_type, antenna_nr,
	// sub_slot, res. Only version, length, type and sub_type mean
	// anything for SIM traces.
	b = append(b,
		gsmtapVersion, gsmtapHdrWords, gsmtapTypeSIM, 0,
		0, 0, 0, 0,
		0, 0, 0, 0,
		subType, 0, 0, 0,
	)
	return append(b, payload...)
}

// ipv4Checksum is the RFC 791 header checksum of h (whose checksum field
// is zero).
func ipv4Checksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(h[i])<<8 | uint32(h[i+1])
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// cardAddr is the IPv4 source address for the n-th card (from 0) of a
// file: 127.1.0.1, 127.1.0.2 and so on, so that Wireshark's conversation
// and endpoint views separate the cards of a shared file.
func cardAddr(n int) netip.Addr {
	n = n%(1<<16-2) + 1
	return netip.AddrFrom4([4]byte{127, 1, byte(n >> 8), byte(n)})
}
