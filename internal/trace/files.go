package trace

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"
)

// fileMode is the mode of trace files: they can hold card contents, so
// only their owner may read them.
const fileMode = 0o600

// pcapFile is one pcap file on disk with size-based rotation: when the
// next packet would take it past maxBytes, name is renamed to name.1
// (name.1 to name.2 and so on, keeping maxFiles) and a new name is
// started. Owned by the Tracer's goroutine.
type pcapFile struct {
	path     string
	maxBytes int64 // 0: never rotate
	maxFiles int   // rotated files kept, at least 1

	f       *os.File // nil while closed (not yet opened, or after an error)
	bw      *bufio.Writer
	pw      *PcapWriter
	bad     bool // the last write failed; the next open starts a fresh file
	failing bool // owned by Tracer.report: a failure was logged, no success since
}

// open opens the file for writing. A file this pcapFile did not write
// itself (left by an earlier run, or after a write error) is rotated away
// rather than appended to: its last record may be incomplete.
func (p *pcapFile) open(appendOK bool) error {
	if appendOK && !p.bad {
		if f, n, ok := openAppend(p.path); ok {
			p.f, p.bw = f, bufio.NewWriterSize(f, 64<<10)
			p.pw = appendPcapWriter(p.bw, n)
			return nil
		}
	}
	if _, err := os.Lstat(p.path); err == nil {
		if err := p.rotate(); err != nil {
			return err
		}
	}
	f, err := os.OpenFile(p.path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, fileMode)
	if err != nil {
		return fmt.Errorf("creating trace file: %w", err)
	}
	bw := bufio.NewWriterSize(f, 64<<10)
	pw, err := NewPcapWriter(bw)
	if err != nil {
		f.Close()
		return err
	}
	p.f, p.bw, p.pw, p.bad = f, bw, pw, false
	return nil
}

// openAppend opens path for appending when it holds a pcap file header
// exactly like the one this package writes.
func openAppend(path string) (*os.File, int64, bool) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND, 0)
	if err != nil {
		return nil, 0, false
	}
	want := appendFileHeader(nil)
	got := make([]byte, len(want))
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() || st.Size() < int64(len(want)) {
		f.Close()
		return nil, 0, false
	}
	if _, err := f.ReadAt(got, 0); err != nil || string(got) != string(want) {
		f.Close()
		return nil, 0, false
	}
	return f, st.Size(), true
}

// rotate shifts name.(N-1) … name.1 and name one place up, dropping
// name.N.
func (p *pcapFile) rotate() error {
	n := max(p.maxFiles, 1)
	if err := os.Remove(p.path + "." + strconv.Itoa(n)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("rotating trace file: %w", err)
	}
	for i := n - 1; i >= 1; i-- {
		from := p.path + "." + strconv.Itoa(i)
		if err := os.Rename(from, p.path+"."+strconv.Itoa(i+1)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("rotating trace file: %w", err)
		}
	}
	if err := os.Rename(p.path, p.path+".1"); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("rotating trace file: %w", err)
	}
	return nil
}

// write writes one APDU packet, opening or rotating the file first when
// needed. After an error the file is closed; the next write starts over
// with a fresh file.
func (p *pcapFile) write(ts time.Time, src netip.Addr, payload []byte, appendOK bool) error {
	if p.f == nil {
		if err := p.open(appendOK); err != nil {
			return err
		}
	}
	size := int64(pcapRecordHeaderLen + ipv4HdrLen + udpHdrLen + gsmtapHdrLen + len(payload))
	if p.maxBytes > 0 && p.pw.Written() > pcapFileHeaderLen && p.pw.Written()+size > p.maxBytes {
		if err := p.close(); err != nil {
			p.bad = true
			return err
		}
		if err := p.open(false); err != nil {
			return err
		}
	}
	if err := p.pw.WriteAPDU(ts, src, payload); err != nil {
		if errors.Is(err, ErrPacketTooLarge) {
			return err // nothing was written; the file is fine
		}
		p.fail()
		return fmt.Errorf("writing trace file: %w", err)
	}
	return nil
}

// flush writes buffered packets to the file.
func (p *pcapFile) flush() error {
	if p.f == nil {
		return nil
	}
	if err := p.bw.Flush(); err != nil {
		p.fail()
		return fmt.Errorf("writing trace file: %w", err)
	}
	return nil
}

// fail closes the file after a write error and marks it for a fresh start.
func (p *pcapFile) fail() {
	if p.f != nil {
		p.f.Close()
	}
	p.f, p.bw, p.pw, p.bad = nil, nil, nil, true
}

// close flushes and closes the file; a closed pcapFile can be written to
// again (it then reopens).
func (p *pcapFile) close() error {
	if p.f == nil {
		return nil
	}
	err := p.bw.Flush()
	if cerr := p.f.Close(); err == nil {
		err = cerr
	}
	p.f, p.bw, p.pw = nil, nil, nil
	if err != nil {
		p.bad = true
		return fmt.Errorf("closing trace file: %w", err)
	}
	return nil
}

// cardFileName returns the per-card file name: by EID when known (it
// stays with an eUICC whichever profile is enabled), else by ICCID, else
// by the server's card ID. Every name is reduced to [0-9A-Za-z_-], so an
// identity chosen by a remote agent cannot leave the directory.
func cardFileName(cardID, iccid, eid string) string {
	switch {
	case eid != "":
		return "eid-" + safeName(eid) + ".pcap"
	case iccid != "":
		return "iccid-" + safeName(iccid) + ".pcap"
	}
	return "card-" + safeName(cardID) + ".pcap"
}

// maxNameLen bounds the identity part of a file name.
const maxNameLen = 64

func safeName(s string) string {
	var b strings.Builder
	for _, r := range s {
		if b.Len() >= maxNameLen {
			break
		}
		switch {
		case r >= '0' && r <= '9', r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r == '-', r == '_':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	if b.Len() == 0 {
		return "unknown"
	}
	return b.String()
}
