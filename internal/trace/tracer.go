package trace

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for Options fields left zero.
const (
	DefaultQueueLen      = 4096
	DefaultMaxQueueBytes = 8 << 20
	DefaultMaxFiles      = 4
	// maxOpenCardFiles bounds the per-card files held open at once; the
	// least recently written one is closed (and later appended to) when
	// another is needed.
	maxOpenCardFiles = 64
	// maxCardStates bounds the per-card redaction states; past it they
	// are all forgotten, which only makes redaction more cautious.
	maxCardStates = 4096
	// maxAddrs bounds the global file's card-to-address map likewise.
	maxAddrs = 1 << 16
	// dropLogEvery rate-limits the warning about dropped events.
	dropLogEvery = 10 * time.Second
)

// ErrClosed is returned by Flush after Close.
var ErrClosed = errors.New("tracer closed")

// Options configures a Tracer. Every sink is optional; a Tracer with none
// still follows the redaction state and counts events.
type Options struct {
	// File is one pcap file for every traced card; "" for none. Cards
	// are told apart by the packets' source address (127.1.0.1, …), which
	// the tracer logs when it assigns one.
	File string
	// Dir is a directory of per-card pcap files, named by EID, ICCID or
	// card ID (see package doc); "" for none. It is created (0700) if
	// missing.
	Dir string
	// Log receives one record per APDU; nil for none.
	Log *slog.Logger
	// LogLevel is the level of those records (default Info).
	LogLevel slog.Level
	// Unredacted turns redaction off: PINs and keys are then written as
	// relayed. Only for test cards; see package doc.
	Unredacted bool
	// Select picks the cards to trace; nil traces every card. It runs on
	// the caller's goroutine for every event and must be cheap.
	Select func(cardID, iccid, eid string) bool
	// QueueLen and MaxQueueBytes bound the events waiting to be written
	// (defaults DefaultQueueLen, DefaultMaxQueueBytes). Events past
	// either bound are dropped and counted, never waited for.
	QueueLen      int
	MaxQueueBytes int64
	// MaxFileBytes rotates a pcap file before it grows past this size
	// (0: never). MaxFiles rotated files are kept per file (default
	// DefaultMaxFiles).
	MaxFileBytes int64
	MaxFiles     int
	// ErrorLog receives the tracer's own reports (drops, write errors,
	// card addresses); nil for slog.Default().
	ErrorLog *slog.Logger
}

// Event is one relayed APDU exchange.
type Event struct {
	// Time is when the command was sent; zero means now.
	Time time.Time
	// CardID names the card connection; redaction state (the selected
	// file per logical channel) is kept per CardID, so it should be
	// unique per connection.
	CardID     string
	ICCID, EID string
	Command    []byte // the command APDU as relayed
	Response   []byte // response data, without the status word
	// SW is the status word; 0 for a command that got no answer (the
	// agent answered with an error, or the connection ended): it is
	// traced with SW 0000, and as the card may or may not have executed
	// it, redaction forgets what it knew of the channel's selected file.
	SW       uint16
	Duration time.Duration // command to response
}

// ResetEvent is a card reset (or the first ATR of a connection).
type ResetEvent struct {
	Time       time.Time // zero means now
	CardID     string
	ICCID, EID string
	ATR        []byte
}

// Stats counts what a Tracer did.
type Stats struct {
	Events      uint64 // events written to the sinks
	Dropped     uint64 // events dropped because the queue was full
	Redacted    uint64 // events with redacted bytes
	WriteErrors uint64 // failed file writes
}

// Tracer writes APDU traces to pcap files and a log. Its methods are safe
// for concurrent use, and a nil *Tracer is a valid tracer that traces
// nothing, so callers need no "tracing on?" checks. APDU and Reset never
// block: they copy the event into a bounded queue that one goroutine,
// owned by the Tracer and ended by Close, drains into the sinks.
type Tracer struct {
	opts  Options
	q     chan *record
	quit  chan struct{} // closed by Close
	done  chan struct{} // closed when run returns
	errlg *slog.Logger

	closed      atomic.Bool
	closeOnce   sync.Once
	closeErr    error
	queuedBytes atomic.Int64
	events      atomic.Uint64
	dropped     atomic.Uint64
	redacted    atomic.Uint64
	writeErrs   atomic.Uint64

	// Owned by run:
	global     *pcapFile
	addrs      map[string]netip.Addr // global file: card ID → source address
	nextAddr   int
	cardFiles  map[string]*cardFile // Dir: file name → file
	names      map[cardKey]string   // Dir: identity → file name, a cache
	cleanFiles map[string]bool      // Dir: files closed cleanly by this tracer
	useClock   uint64
	states     map[string]*cardState // redaction state per card ID
	seenDrops  uint64
	dropLogged time.Time // when drops were last logged
	payload    []byte    // reused pcap payload buffer
}

// cardKey is the identity a per-card file name is made from.
type cardKey struct{ id, iccid, eid string }

// cardFile is an open per-card file and when it was last used.
type cardFile struct {
	pcapFile
	lastUse uint64
}

type recKind uint8

const (
	recAPDU recKind = iota
	recReset
	recEnd
	recFlush
)

// record is one queued event; buf holds its own copy of the bytes.
type record struct {
	kind               recKind
	time               time.Time
	cardID, iccid, eid string
	buf                []byte // command, then response (or the ATR)
	ncmd               int
	sw                 uint16
	dur                time.Duration
	flushed            chan struct{}
}

var recordPool = sync.Pool{New: func() any { return new(record) }}

// maxPooledBuf keeps oversized buffers out of the pool.
const maxPooledBuf = 4 << 10

// New starts a Tracer. It opens the global file (rotating away a file an
// earlier run left) and creates Dir, so that a bad path fails at startup.
func New(opts Options) (*Tracer, error) {
	if opts.QueueLen <= 0 {
		opts.QueueLen = DefaultQueueLen
	}
	if opts.MaxQueueBytes <= 0 {
		opts.MaxQueueBytes = DefaultMaxQueueBytes
	}
	if opts.MaxFiles <= 0 {
		opts.MaxFiles = DefaultMaxFiles
	}
	t := &Tracer{
		opts:       opts,
		q:          make(chan *record, opts.QueueLen),
		quit:       make(chan struct{}),
		done:       make(chan struct{}),
		errlg:      opts.ErrorLog,
		addrs:      make(map[string]netip.Addr),
		cardFiles:  make(map[string]*cardFile),
		names:      make(map[cardKey]string),
		cleanFiles: make(map[string]bool),
		states:     make(map[string]*cardState),
	}
	if t.errlg == nil {
		t.errlg = slog.Default()
	}
	if opts.File != "" {
		t.global = &pcapFile{path: opts.File, maxBytes: opts.MaxFileBytes, maxFiles: opts.MaxFiles}
		if err := t.global.open(false); err != nil {
			return nil, fmt.Errorf("opening trace file %s: %w", opts.File, err)
		}
	}
	if opts.Dir != "" {
		if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
			if t.global != nil {
				t.global.close()
			}
			return nil, fmt.Errorf("creating trace directory: %w", err)
		}
	}
	go t.run()
	return t, nil
}

// Enabled reports whether events of this card would be traced, so that a
// caller can skip preparing them.
func (t *Tracer) Enabled(cardID, iccid, eid string) bool {
	if t == nil || t.closed.Load() {
		return false
	}
	return t.opts.Select == nil || t.opts.Select(cardID, iccid, eid)
}

// APDU queues one exchange for tracing. It copies what it keeps, so the
// caller may reuse ev's slices at once. When the queue is full the event
// is dropped and counted (see Stats).
func (t *Tracer) APDU(ev Event) {
	if !t.Enabled(ev.CardID, ev.ICCID, ev.EID) {
		return
	}
	r := t.newRecord(recAPDU, ev.Time, ev.CardID, ev.ICCID, ev.EID, len(ev.Command)+len(ev.Response))
	r.buf = append(append(r.buf, ev.Command...), ev.Response...)
	r.ncmd, r.sw, r.dur = len(ev.Command), ev.SW, ev.Duration
	t.enqueue(r)
}

// Reset queues a card reset: it is logged, and the card's redaction state
// starts over (basic channel at the MF, others closed).
func (t *Tracer) Reset(ev ResetEvent) {
	if !t.Enabled(ev.CardID, ev.ICCID, ev.EID) {
		return
	}
	r := t.newRecord(recReset, ev.Time, ev.CardID, ev.ICCID, ev.EID, len(ev.ATR))
	r.buf = append(r.buf, ev.ATR...)
	t.enqueue(r)
}

// EndCard says a card connection has ended: the tracer forgets its
// redaction state and global-file address. Best effort: when the queue
// is full the notice is skipped (the state is bounded anyway).
func (t *Tracer) EndCard(cardID string) {
	if t == nil || t.closed.Load() {
		return
	}
	r := t.newRecord(recEnd, time.Time{}, cardID, "", "", 0)
	select {
	case t.q <- r:
	default:
		putRecord(r)
	}
}

func (t *Tracer) newRecord(kind recKind, ts time.Time, cardID, iccid, eid string, n int) *record {
	if ts.IsZero() {
		ts = time.Now()
	}
	r := recordPool.Get().(*record)
	if cap(r.buf) < n {
		r.buf = make([]byte, 0, n)
	}
	r.kind, r.time, r.cardID, r.iccid, r.eid = kind, ts, cardID, iccid, eid
	return r
}

func putRecord(r *record) {
	if cap(r.buf) > maxPooledBuf {
		r.buf = nil
	}
	*r = record{buf: r.buf[:0]}
	recordPool.Put(r)
}

// enqueue hands r to run without waiting.
func (t *Tracer) enqueue(r *record) {
	n := int64(len(r.buf))
	if t.queuedBytes.Add(n) > t.opts.MaxQueueBytes {
		t.queuedBytes.Add(-n)
		t.dropped.Add(1)
		putRecord(r)
		return
	}
	select {
	case t.q <- r:
	default:
		t.queuedBytes.Add(-n)
		t.dropped.Add(1)
		putRecord(r)
	}
}

// Flush waits until every event queued before it is written to the files
// (and the files' buffers are flushed), or until ctx is done.
func (t *Tracer) Flush(ctx context.Context) error {
	if t == nil {
		return nil
	}
	if t.closed.Load() {
		return ErrClosed
	}
	r := t.newRecord(recFlush, time.Time{}, "", "", "", 0)
	ch := make(chan struct{})
	r.flushed = ch
	select {
	case t.q <- r:
	case <-t.done:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-ch:
		return nil
	case <-t.done:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Stats returns the counters so far.
func (t *Tracer) Stats() Stats {
	if t == nil {
		return Stats{}
	}
	return Stats{
		Events:      t.events.Load(),
		Dropped:     t.dropped.Load(),
		Redacted:    t.redacted.Load(),
		WriteErrors: t.writeErrs.Load(),
	}
}

// Close writes what is queued, flushes and closes the files and stops the
// tracer's goroutine. Events that race with Close may be lost. It returns
// the first error closing a file; calling it again returns the same.
func (t *Tracer) Close() error {
	if t == nil {
		return nil
	}
	t.closeOnce.Do(func() {
		t.closed.Store(true)
		close(t.quit)
		<-t.done
		if d := t.dropped.Load(); d > 0 {
			t.errlg.Warn("apdu trace: events dropped while the queue was full", "dropped", d)
		}
	})
	return t.closeErr
}

// run is the Tracer's goroutine: it owns the files and the redaction
// state, and drains the queue until Close.
func (t *Tracer) run() {
	defer close(t.done)
	for {
		select {
		case r := <-t.q:
			t.handle(r)
			if len(t.q) == 0 {
				t.flushFiles()
			}
		case <-t.quit:
			for {
				select {
				case r := <-t.q:
					t.handle(r)
				default:
					t.closeErr = t.closeFiles()
					return
				}
			}
		}
	}
}

func (t *Tracer) handle(r *record) {
	defer putRecord(r)
	t.queuedBytes.Add(-int64(len(r.buf)))
	if d := t.dropped.Load(); d != t.seenDrops {
		// Dropped events may have changed the selected files: forget
		// every card's state, so redaction assumes the worst.
		t.seenDrops = d
		for _, st := range t.states {
			*st = cardState{}
		}
		if now := time.Now(); now.Sub(t.dropLogged) >= dropLogEvery {
			t.dropLogged = now
			t.errlg.Warn("apdu trace: queue full, events dropped", "dropped", d)
		}
	}
	switch r.kind {
	case recAPDU:
		t.writeAPDU(r)
	case recReset:
		t.state(r.cardID).reset()
		if lg := t.opts.Log; lg != nil {
			lg.LogAttrs(context.Background(), t.opts.LogLevel, "card reset",
				t.cardAttrs(r, slog.String("atr", hex.EncodeToString(r.buf)))...)
		}
	case recEnd:
		delete(t.states, r.cardID)
		delete(t.addrs, r.cardID)
	case recFlush:
		t.flushFiles()
		close(r.flushed)
	}
}

// state returns the redaction state of a card, creating it (knowing
// nothing) on first use.
func (t *Tracer) state(cardID string) *cardState {
	st := t.states[cardID]
	if st == nil {
		if len(t.states) >= maxCardStates {
			clear(t.states)
		}
		st = new(cardState)
		t.states[cardID] = st
	}
	return st
}

func (t *Tracer) writeAPDU(r *record) {
	cmd, resp := r.buf[:r.ncmd:r.ncmd], r.buf[r.ncmd:]
	red := decide(t.state(r.cardID), cmd, resp, r.sw)
	if t.opts.Unredacted {
		red = 0
	}
	apply(red, cmd, resp)
	t.events.Add(1)
	if red != 0 {
		t.redacted.Add(1)
	}
	if t.global != nil || t.opts.Dir != "" {
		t.payload = AppendSIMAPDU(t.payload[:0], cmd, resp, r.sw)
		payload := t.payload
		if len(payload) > maxPayload { // keep the SW, which the dissector reads from the end
			payload = append(payload[:maxPayload-2], byte(r.sw>>8), byte(r.sw))
		}
		if t.global != nil {
			t.report(t.global, t.global.write(r.time, t.addr(r), payload, true))
		}
		if t.opts.Dir != "" {
			t.writeCardFile(r, payload)
		}
	}
	if lg := t.opts.Log; lg != nil {
		attrs := t.cardAttrs(r,
			slog.String("cmd", hex.EncodeToString(cmd)),
			slog.String("rsp", hex.EncodeToString(resp)),
			slog.String("sw", fmt.Sprintf("%04x", r.sw)),
			slog.Duration("dur", r.dur))
		if red != 0 {
			attrs = append(attrs, slog.String("redacted", red.String()))
		}
		lg.LogAttrs(context.Background(), t.opts.LogLevel, "apdu", attrs...)
	}
}

func (t *Tracer) cardAttrs(r *record, more ...slog.Attr) []slog.Attr {
	attrs := make([]slog.Attr, 0, 3+len(more))
	attrs = append(attrs, slog.String("card", r.cardID))
	if r.iccid != "" {
		attrs = append(attrs, slog.String("iccid", r.iccid))
	}
	if r.eid != "" {
		attrs = append(attrs, slog.String("eid", r.eid))
	}
	return append(attrs, more...)
}

// addr returns the card's source address in the global file, assigning
// (and logging) one on first use.
func (t *Tracer) addr(r *record) netip.Addr {
	if a, ok := t.addrs[r.cardID]; ok {
		return a
	}
	if len(t.addrs) >= maxAddrs {
		clear(t.addrs)
	}
	a := cardAddr(t.nextAddr)
	t.nextAddr++
	t.addrs[r.cardID] = a
	t.errlg.Info("apdu trace: card address in the trace file", "file", t.opts.File,
		"addr", a.String(), "card", r.cardID, "iccid", r.iccid, "eid", r.eid)
	return a
}

func (t *Tracer) writeCardFile(r *record, payload []byte) {
	k := cardKey{r.cardID, r.iccid, r.eid}
	name, ok := t.names[k]
	if !ok {
		if len(t.names) >= maxCardStates {
			clear(t.names)
		}
		name = cardFileName(r.cardID, r.iccid, r.eid)
		t.names[k] = name
	}
	cf := t.cardFiles[name]
	if cf == nil {
		if len(t.cardFiles) >= maxOpenCardFiles {
			t.closeLeastUsed()
		}
		cf = &cardFile{pcapFile: pcapFile{
			path:     filepath.Join(t.opts.Dir, name),
			maxBytes: t.opts.MaxFileBytes,
			maxFiles: t.opts.MaxFiles,
		}}
		t.cardFiles[name] = cf
	}
	t.useClock++
	cf.lastUse = t.useClock
	t.report(&cf.pcapFile, cf.write(r.time, cardAddr(0), payload, t.cleanFiles[name]))
}

func (t *Tracer) closeLeastUsed() {
	var oldest string
	var at uint64
	for name, cf := range t.cardFiles {
		if oldest == "" || cf.lastUse < at {
			oldest, at = name, cf.lastUse
		}
	}
	cf := t.cardFiles[oldest]
	delete(t.cardFiles, oldest)
	err := cf.close()
	if len(t.cleanFiles) >= maxCardStates {
		clear(t.cleanFiles)
	}
	t.cleanFiles[oldest] = err == nil && !cf.bad
	if err != nil {
		t.report(&cf.pcapFile, err)
	}
}

// report counts and logs a file error. Only the first of a run of
// failures of one file is logged: a full disk should not flood the log.
func (t *Tracer) report(p *pcapFile, err error) {
	if err == nil {
		if p.failing {
			p.failing = false
			t.errlg.Info("apdu trace: writing works again", "file", p.path)
		}
		return
	}
	t.writeErrs.Add(1)
	if !p.failing {
		p.failing = true
		t.errlg.Error("apdu trace: writing failed", "file", p.path, "err", err)
	}
}

func (t *Tracer) flushFiles() {
	if t.global != nil {
		if err := t.global.flush(); err != nil {
			t.report(t.global, err)
		}
	}
	for _, cf := range t.cardFiles {
		if err := cf.flush(); err != nil {
			t.report(&cf.pcapFile, err)
		}
	}
}

func (t *Tracer) closeFiles() error {
	var first error
	if t.global != nil {
		first = t.global.close()
	}
	for _, cf := range t.cardFiles {
		if err := cf.close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}
