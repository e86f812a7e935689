package trace

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// logRecorder is a slog.Handler that keeps records; with gate set, Handle
// reports on entered and then waits for gate to close, which lets a test
// hold the tracer's goroutine inside a write.
type logRecorder struct {
	mu      sync.Mutex
	recs    []map[string]string
	gate    chan struct{}
	entered chan struct{}
}

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (h *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *logRecorder) WithGroup(string) slog.Handler            { return h }
func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	m := map[string]string{"msg": r.Message, "level": r.Level.String()}
	r.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.String(); return true })
	h.mu.Lock()
	h.recs = append(h.recs, m)
	h.mu.Unlock()
	if h.gate != nil {
		select {
		case h.entered <- struct{}{}:
		default:
		}
		<-h.gate
	}
	return nil
}

func (h *logRecorder) records(msg string) []map[string]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []map[string]string
	for _, r := range h.recs {
		if r["msg"] == msg {
			out = append(out, r)
		}
	}
	return out
}

func newGate() *logRecorder {
	return &logRecorder{gate: make(chan struct{}), entered: make(chan struct{}, 1)}
}

func ev(t testing.TB, card, iccid, cmd, rsp string, sw uint16) Event {
	return Event{
		Time:     time.Unix(1700000000, 0),
		CardID:   card,
		ICCID:    iccid,
		Command:  unhex(t, cmd),
		Response: unhex(t, rsp),
		SW:       sw,
		Duration: 1500 * time.Microsecond,
	}
}

const (
	iccid1   = "8949440000001155314"
	eid2     = "89049032123451234512345678901235"
	pinBytes = "31323334"
)

func TestTracerSinks(t *testing.T) {
	dir := t.TempDir()
	apdus, errlog := &logRecorder{}, &logRecorder{}
	tr, err := New(Options{
		File:     filepath.Join(dir, "all.pcap"),
		Dir:      filepath.Join(dir, "cards"),
		Log:      slog.New(apdus),
		LogLevel: slog.LevelDebug,
		ErrorLog: slog.New(errlog),
	})
	if err != nil {
		t.Fatal(err)
	}
	ts := time.Unix(1700000000, 987654321)
	events := []Event{
		ev(t, "c1", iccid1, "00a40004023f00", "", 0x9000),
		ev(t, "c1", iccid1, "00a40004022fe2", "", 0x9000),
		ev(t, "c1", iccid1, "00b000000a", "98941400000011553541", 0x9000),
		ev(t, "c1", iccid1, "0020000108"+pinBytes+"ffffffff", "", 0x9000),
		{Time: ts, CardID: "c2", EID: eid2, Command: unhex(t, "80e2910003bf3e00"), Response: unhex(t, "bf3e125a10"+eid2), SW: 0x9000},
		ev(t, "../../c3", "", "0020000104"+pinBytes, "", 0x63c2),
	}
	for _, e := range events {
		tr.APDU(e)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if s := tr.Stats(); s.Events != 6 || s.Redacted != 2 || s.Dropped != 0 || s.WriteErrors != 0 {
		t.Errorf("Stats = %+v", s)
	}

	all := readPcap(t, filepath.Join(dir, "all.pcap"))
	wantPayloads := []string{
		"00a40004023f00 9000",
		"00a40004022fe2 9000",
		"00b000000a 98941400000011553541 9000",
		"0020000108 ffffffffffffffff 9000",
		"80e2910003bf3e00 bf3e125a10" + eid2 + " 9000",
		"0020000104 ffffffff 63c2",
	}
	wantSrc := []string{"127.1.0.1", "127.1.0.1", "127.1.0.1", "127.1.0.1", "127.1.0.2", "127.1.0.3"}
	if len(all) != len(wantPayloads) {
		t.Fatalf("%d packets in all.pcap, want %d", len(all), len(wantPayloads))
	}
	for i, p := range all {
		if want := unhex(t, wantPayloads[i]); !bytes.Equal(p.payload, want) {
			t.Errorf("packet %d: payload % x, want % x", i, p.payload, want)
		}
		if p.src.String() != wantSrc[i] {
			t.Errorf("packet %d: source %s, want %s", i, p.src, wantSrc[i])
		}
	}
	if !all[4].ts.Equal(ts) {
		t.Errorf("timestamp %v, want %v", all[4].ts, ts)
	}
	raw, _ := os.ReadFile(filepath.Join(dir, "all.pcap"))
	if bytes.Contains(raw, unhex(t, pinBytes)) {
		t.Error("all.pcap holds the PIN")
	}

	for name, n := range map[string]int{
		"iccid-" + iccid1 + ".pcap": 4,
		"eid-" + eid2 + ".pcap":     1,
		"card-______c3.pcap":        1,
	} {
		pk := readPcap(t, filepath.Join(dir, "cards", name))
		if len(pk) != n {
			t.Errorf("%s: %d packets, want %d", name, len(pk), n)
		}
		for _, p := range pk {
			if p.src.String() != "127.1.0.1" {
				t.Errorf("%s: source %s", name, p.src)
			}
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "cards")); len(ents) != 3 {
		t.Errorf("%d files in the card directory, want 3", len(ents))
	}
	if st, err := os.Stat(filepath.Join(dir, "all.pcap")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("all.pcap mode: %v %v", st.Mode(), err)
	}

	recs := apdus.records("apdu")
	if len(recs) != 6 {
		t.Fatalf("%d apdu log records, want 6", len(recs))
	}
	if r := recs[3]; r["cmd"] != "0020000108ffffffffffffffff" || r["redacted"] != "cmd" || r["sw"] != "9000" ||
		r["card"] != "c1" || r["iccid"] != iccid1 || r["dur"] != "1.5ms" || r["level"] != "DEBUG" {
		t.Errorf("VERIFY log record %v", r)
	}
	if r := recs[2]; r["rsp"] != "98941400000011553541" || r["redacted"] != "" {
		t.Errorf("READ BINARY log record %v", r)
	}
	if r := recs[4]; r["eid"] != eid2 {
		t.Errorf("eUICC log record %v", r)
	}
	for _, r := range recs {
		if strings.Contains(r["cmd"], pinBytes) {
			t.Errorf("log holds the PIN: %v", r)
		}
	}
	if a := errlog.records("apdu trace: card address in the trace file"); len(a) != 3 || a[1]["addr"] != "127.1.0.2" || a[1]["eid"] != eid2 {
		t.Errorf("address records %v", a)
	}
}

func TestTracerUnredacted(t *testing.T) {
	dir := t.TempDir()
	apdus := &logRecorder{}
	tr, err := New(Options{File: filepath.Join(dir, "all.pcap"), Log: slog.New(apdus), Unredacted: true, ErrorLog: slog.New(&logRecorder{})})
	if err != nil {
		t.Fatal(err)
	}
	tr.APDU(ev(t, "c1", "", "0020000104"+pinBytes, "", 0x9000))
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if p := readPcap(t, filepath.Join(dir, "all.pcap")); !bytes.Equal(p[0].payload, unhex(t, "0020000104"+pinBytes+"9000")) {
		t.Errorf("payload % x", p[0].payload)
	}
	if r := apdus.records("apdu")[0]; r["cmd"] != "0020000104"+pinBytes || r["redacted"] != "" {
		t.Errorf("log record %v", r)
	}
	if s := tr.Stats(); s.Redacted != 0 {
		t.Errorf("Stats.Redacted = %d with redaction off", s.Redacted)
	}
}

// TestTracerDrops holds the tracer's goroutine in a log write, fills the
// queue, and checks that further events are dropped at once, counted,
// reported, and make redaction forget what it knew.
func TestTracerDrops(t *testing.T) {
	apdus, errlog := newGate(), &logRecorder{}
	tr, err := New(Options{Log: slog.New(apdus), QueueLen: 2, ErrorLog: slog.New(errlog)})
	if err != nil {
		t.Fatal(err)
	}
	tr.APDU(ev(t, "c1", "", "00a40004026f07", "", 0x9000)) // EF.IMSI: not a key file
	<-apdus.entered                                        // the goroutine holds it now
	tr.APDU(ev(t, "c1", "", "00b0000009", "080910101032547698", 0x9000))
	tr.APDU(ev(t, "c1", "", "00b0000009", "080910101032547698", 0x9000))
	tr.APDU(ev(t, "c1", "", "00b0000009", "080910101032547698", 0x9000)) // queue full
	tr.APDU(ev(t, "c1", "", "00b0000009", "080910101032547698", 0x9000))
	if d := tr.Stats().Dropped; d != 2 {
		t.Errorf("Dropped = %d, want 2", d)
	}
	close(apdus.gate)
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if s := tr.Stats(); s.Events != 3 || s.Dropped != 2 {
		t.Errorf("Stats = %+v", s)
	}
	recs := apdus.records("apdu")
	if len(recs) != 3 || recs[1]["redacted"] != "rsp" {
		t.Errorf("after drops the READ BINARY must be redacted (the SELECTs may be lost): %v", recs)
	}
	if w := errlog.records("apdu trace: queue full, events dropped"); len(w) != 1 || w[0]["dropped"] != "2" {
		t.Errorf("drop warnings %v", w)
	}
	if w := errlog.records("apdu trace: events dropped while the queue was full"); len(w) != 1 {
		t.Errorf("close summary %v", w)
	}
}

func TestTracerMaxQueueBytes(t *testing.T) {
	apdus := newGate()
	tr, err := New(Options{Log: slog.New(apdus), MaxQueueBytes: 100, ErrorLog: slog.New(&logRecorder{})})
	if err != nil {
		t.Fatal(err)
	}
	tr.APDU(ev(t, "c1", "", "00b0000000", "", 0x9000))
	<-apdus.entered
	tr.APDU(Event{CardID: "c1", Command: unhex(t, "00b0000000"), Response: make([]byte, 96), SW: 0x9000}) // 101 bytes
	tr.APDU(Event{CardID: "c1", Command: unhex(t, "00b0000000"), Response: make([]byte, 95), SW: 0x9000}) // 100 bytes
	if d := tr.Stats().Dropped; d != 1 {
		t.Errorf("Dropped = %d, want 1", d)
	}
	close(apdus.gate)
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if s := tr.Stats(); s.Events != 2 {
		t.Errorf("Events = %d, want 2", s.Events)
	}
}

func TestTracerConcurrent(t *testing.T) {
	tr, err := New(Options{File: filepath.Join(t.TempDir(), "all.pcap"), QueueLen: 16, ErrorLog: slog.New(&logRecorder{})})
	if err != nil {
		t.Fatal(err)
	}
	const workers, each = 8, 200
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			cmd := unhex(t, "00b0000004")
			rsp := make([]byte, 4)
			for i := range each {
				rsp[0] = byte(i)
				tr.APDU(Event{CardID: fmt.Sprint("c", w), Command: cmd, Response: rsp, SW: 0x9000})
			}
			tr.EndCard(fmt.Sprint("c", w))
		})
	}
	wg.Wait()
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if s := tr.Stats(); s.Events+s.Dropped != workers*each {
		t.Errorf("Events %d + Dropped %d != %d", s.Events, s.Dropped, workers*each)
	}
}

func TestTracerFlushAndClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "all.pcap")
	tr, err := New(Options{File: path, ErrorLog: slog.New(&logRecorder{})})
	if err != nil {
		t.Fatal(err)
	}
	tr.APDU(ev(t, "c1", "", "00a40004023f00", "", 0x9000))
	if err := tr.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := len(readPcap(t, path)); n != 1 {
		t.Errorf("%d packets after Flush, want 1", n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := tr.Flush(ctx); err != nil && !errors.Is(err, context.Canceled) {
		t.Errorf("Flush(cancelled) = %v", err)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tr.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	tr.APDU(ev(t, "c1", "", "00a40004023f00", "", 0x9000)) // after Close: ignored
	tr.Reset(ResetEvent{CardID: "c1"})
	tr.EndCard("c1")
	if err := tr.Flush(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Flush after Close = %v, want ErrClosed", err)
	}
	if tr.Enabled("c1", "", "") {
		t.Error("Enabled after Close")
	}
	if s := tr.Stats(); s.Events != 1 || s.Dropped != 0 {
		t.Errorf("Stats = %+v", s)
	}
}

func TestNilTracer(t *testing.T) {
	var tr *Tracer
	tr.APDU(ev(t, "c1", "", "00a40004023f00", "", 0x9000))
	tr.Reset(ResetEvent{CardID: "c1"})
	tr.EndCard("c1")
	if tr.Enabled("c1", "", "") || tr.Stats() != (Stats{}) || tr.Flush(context.Background()) != nil || tr.Close() != nil {
		t.Error("nil Tracer is not inert")
	}
}

func TestTracerSelect(t *testing.T) {
	apdus := &logRecorder{}
	tr, err := New(Options{
		Log:      slog.New(apdus),
		Select:   func(cardID, iccid, eid string) bool { return iccid == iccid1 },
		ErrorLog: slog.New(&logRecorder{}),
	})
	if err != nil {
		t.Fatal(err)
	}
	if !tr.Enabled("x", iccid1, "") || tr.Enabled("x", "", "") {
		t.Error("Enabled does not follow Select")
	}
	tr.APDU(ev(t, "c1", "", "00a40004023f00", "", 0x9000))
	tr.APDU(ev(t, "c1", iccid1, "00a40004023f00", "", 0x9000))
	tr.Reset(ResetEvent{CardID: "c2", ATR: []byte{0x3b, 0x00}})
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(apdus.records("apdu")); n != 1 || len(apdus.records("card reset")) != 0 {
		t.Errorf("%d apdu records, want 1; %d resets, want 0", n, len(apdus.records("card reset")))
	}
}

func TestTracerResetAndEndCard(t *testing.T) {
	apdus, errlog := &logRecorder{}, &logRecorder{}
	tr, err := New(Options{File: filepath.Join(t.TempDir(), "all.pcap"), Log: slog.New(apdus), ErrorLog: slog.New(errlog)})
	if err != nil {
		t.Fatal(err)
	}
	tr.APDU(ev(t, "c1", "", "00a4040010a0000000871002ffffffff8907090000", "", 0x9000))
	tr.APDU(ev(t, "c1", "", "00a40004026f08", "", 0x9000))
	tr.APDU(ev(t, "c1", "", "00b0000004", "aabbccdd", 0x9000)) // redacted: EF.Keys
	tr.Reset(ResetEvent{CardID: "c1", ATR: []byte{0x3b, 0x9f}})
	tr.APDU(ev(t, "c1", "", "00b0000004", "", 0x6986)) // after the ATR no EF is current
	tr.EndCard("c1")
	tr.APDU(ev(t, "c1", "", "00b0000004", "aabbccdd", 0x9000)) // a new connection: nothing known
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	recs := apdus.records("apdu")
	var got []string
	for _, r := range recs {
		got = append(got, r["redacted"])
	}
	if want := []string{"", "", "rsp", "", "rsp"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("redacted %q, want %q", got, want)
	}
	if r := apdus.records("card reset"); len(r) != 1 || r[0]["atr"] != "3b9f" || r[0]["card"] != "c1" {
		t.Errorf("reset records %v", r)
	}
	if a := errlog.records("apdu trace: card address in the trace file"); len(a) != 2 || a[1]["addr"] != "127.1.0.2" {
		t.Errorf("after EndCard the card gets a new address: %v", a)
	}
}

func TestTracerHugeAPDU(t *testing.T) {
	path := filepath.Join(t.TempDir(), "all.pcap")
	tr, err := New(Options{File: path, ErrorLog: slog.New(&logRecorder{})})
	if err != nil {
		t.Fatal(err)
	}
	rsp := bytes.Repeat([]byte{0xab}, 65536)
	tr.APDU(Event{CardID: "c1", Command: unhex(t, "00b0000000000000"), Response: rsp, SW: 0x9000})
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	p := readPcap(t, path)
	if len(p) != 1 || len(p[0].payload) != maxPayload || !bytes.HasSuffix(p[0].payload, []byte{0x90, 0x00}) {
		t.Errorf("huge APDU: %d packets, payload %d bytes", len(p), len(p[0].payload))
	}
}

func TestNewErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := New(Options{File: filepath.Join(dir, "missing", "all.pcap")}); err == nil || !strings.Contains(err.Error(), "all.pcap") {
		t.Errorf("File in a missing directory: %v", err)
	}
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Options{File: filepath.Join(dir, "all.pcap"), Dir: filepath.Join(file, "cards")}); err == nil {
		t.Error("Dir under a regular file: no error")
	}
}

// TestTracerWriteErrors makes the card directory unusable mid-run: writes
// fail, are counted, logged once, and work again once it is back.
func TestTracerWriteErrors(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cards")
	errlog := &logRecorder{}
	tr, err := New(Options{Dir: dir, ErrorLog: slog.New(errlog)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tr.APDU(ev(t, "c1", "", "00a40004023f00", "", 0x9000))
	tr.APDU(ev(t, "c1", "", "00a40004023f00", "", 0x9000))
	if err := tr.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if s := tr.Stats(); s.WriteErrors != 2 {
		t.Errorf("WriteErrors = %d, want 2", s.WriteErrors)
	}
	if n := len(errlog.records("apdu trace: writing failed")); n != 1 {
		t.Errorf("%d failure records, want 1", n)
	}
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	tr.APDU(ev(t, "c1", "", "00a40004023f00", "", 0x9000))
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(errlog.records("apdu trace: writing works again")); n != 1 {
		t.Errorf("%d recovery records, want 1", n)
	}
	if n := len(readPcap(t, filepath.Join(dir, "card-c1.pcap"))); n != 1 {
		t.Errorf("%d packets after recovery, want 1", n)
	}
}
