package trace

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"
)

var (
	benchCmd = []byte{0x00, 0xb0, 0x00, 0x00, 0x0a}
	benchRsp = []byte{0x98, 0x94, 0x14, 0x00, 0x00, 0x00, 0x11, 0x55, 0x35, 0x41}
)

func benchEvent() Event {
	return Event{Time: time.Unix(1700000000, 0), CardID: "c1", ICCID: iccid1, Command: benchCmd, Response: benchRsp, SW: 0x9000}
}

// BenchmarkAPDUOff is the relay's cost with tracing off: a nil Tracer.
func BenchmarkAPDUOff(b *testing.B) {
	var tr *Tracer
	e := benchEvent()
	b.ReportAllocs()
	for b.Loop() {
		tr.APDU(e)
	}
}

// BenchmarkAPDUNotSelected is the cost for a card that Select leaves out.
func BenchmarkAPDUNotSelected(b *testing.B) {
	tr, err := New(Options{Select: func(string, string, string) bool { return false }})
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	e := benchEvent()
	b.ReportAllocs()
	for b.Loop() {
		tr.APDU(e)
	}
}

// benchOn measures APDU with tracing on, end to end: the caller's copy and
// enqueue plus, through Flush at the end, the goroutine's redaction and
// writes. The queue holds every event, so none is dropped and the time
// per op is the slower of the caller and the goroutine.
func benchOn(b *testing.B, opts Options) {
	opts.ErrorLog = slog.New(slog.DiscardHandler)
	opts.QueueLen = b.N + 1
	opts.MaxQueueBytes = 1 << 40
	tr, err := New(opts)
	if err != nil {
		b.Fatal(err)
	}
	e := benchEvent()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		tr.APDU(e)
	}
	if err := tr.Flush(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	b.ReportMetric(float64(tr.Stats().Dropped)/float64(b.N), "drops/op")
	if err := tr.Close(); err != nil {
		b.Fatal(err)
	}
}

func BenchmarkAPDUNoSinks(b *testing.B) { benchOn(b, Options{}) }

func BenchmarkAPDUPcap(b *testing.B) {
	benchOn(b, Options{File: filepath.Join(b.TempDir(), "all.pcap")})
}

func BenchmarkAPDUPcapDir(b *testing.B) {
	dir := b.TempDir()
	benchOn(b, Options{File: filepath.Join(dir, "all.pcap"), Dir: filepath.Join(dir, "cards")})
}

func BenchmarkAPDULog(b *testing.B) {
	benchOn(b, Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
}

func BenchmarkPcapWriteAPDU(b *testing.B) {
	p, err := NewPcapWriter(io.Discard)
	if err != nil {
		b.Fatal(err)
	}
	var payload []byte
	ts := time.Unix(1700000000, 0)
	b.ReportAllocs()
	for b.Loop() {
		payload = AppendSIMAPDU(payload[:0], benchCmd, benchRsp, 0x9000)
		if err := p.WriteAPDU(ts, cardAddr(0), payload); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRedact(b *testing.B) {
	st := new(cardState)
	cmd := []byte{0x00, 0x20, 0x00, 0x01, 0x08, 0x31, 0x32, 0x33, 0x34, 0xff, 0xff, 0xff, 0xff}
	b.ReportAllocs()
	for b.Loop() {
		redact(st, cmd, nil, 0x9000)
	}
}
