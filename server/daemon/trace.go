package daemon

import (
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wsrc-go/wsrc/internal/trace"
	"github.com/wsrc-go/wsrc/server"
)

// APDU tracing (package internal/trace): --trace-pcap, --trace-dir and
// --trace-log choose the sinks, the other --trace-* flags what goes in.
// apduTracer hands the relay's exchanges (server.Tracer) to the tracer
// and tells it when a card connection ends (server.Observer); the
// tracer's counts are metrics. The tracer is closed after the relay has
// stopped, so that the last exchanges are written.

// minTraceFileSize is the least --trace-max-size: smaller files would
// rotate every few APDUs.
const minTraceFileSize = 64 << 10

// traceConfig resolves the [trace] settings and --trace-* flags.
func (s *settings) traceConfig(p *problems, o options, fc *fileConfig, pick picker, def func(string) bool) {
	t := &fc.Trace
	s.trace.pcap = pick("trace-pcap", def("trace.pcap"), t.Pcap, o.tracePcap).(string)
	s.trace.dir = pick("trace-dir", def("trace.dir"), t.Dir, o.traceDir).(string)
	s.trace.log = pick("trace-log", def("trace.log"), t.Log, o.traceLog).(bool)
	s.trace.noRedact = pick("trace-no-redact", def("trace.no_redact"), t.NoRedact, o.traceNoRedact).(bool)
	s.trace.keep = pick("trace-keep", def("trace.keep"), t.Keep, o.traceKeep).(int)
	cards, fromFlag := t.Cards, s.flagSet("trace-card")
	if fromFlag {
		cards = o.traceCards
	}
	for i, c := range cards {
		if c = strings.TrimSpace(c); c == "" {
			key := "trace.cards"
			if !fromFlag {
				key = fmt.Sprintf("trace.cards[%d]", i)
			}
			p.add(key, "an empty entry (name a card ID, ICCID or EID)")
			continue
		}
		s.trace.cards = append(s.trace.cards, c)
	}
	switch raw := t.MaxSize.raw; {
	case s.flagSet("trace-max-size") || raw == nil:
		s.trace.maxSize = o.traceMaxSize
	default:
		switch v := raw.(type) {
		case int64:
			s.trace.maxSize = v
		case string:
			n, err := parseSize(v)
			if err != nil {
				p.add("trace.max_size", "%v", err)
			}
			s.trace.maxSize = n
		default:
			p.add("trace.max_size", "%v is not a size (bytes, or a string such as \"100M\")", raw)
		}
	}
	if n := s.trace.maxSize; n != 0 && n < minTraceFileSize {
		p.add("trace.max_size", "%d bytes is too small (at least 64K; 0 never rotates)", n)
	}
	if k := s.trace.keep; k < 0 || k > 1000 {
		p.add("trace.keep", "%d is out of range (1 to 1000; 0 for the default, 4)", k)
	}
	if f := s.trace.pcap; f != "" {
		if fi, err := os.Stat(f); err == nil && fi.IsDir() {
			p.add("trace.pcap", "%s is a directory (for one file per card use trace.dir)", f)
		}
	}
	if d := s.trace.dir; d != "" {
		if fi, err := os.Stat(d); err == nil && !fi.IsDir() {
			p.add("trace.dir", "%s is not a directory", d)
		}
	}
}

// newTracer starts the tracer the settings ask for; nil when tracing is
// off.
func newTracer(t traceSettings, logger *slog.Logger) (*trace.Tracer, error) {
	if !t.enabled() {
		return nil, nil
	}
	opts := trace.Options{File: t.pcap, Dir: t.dir, Unredacted: t.noRedact, Select: trace.SelectCards(t.cards),
		MaxFileBytes: t.maxSize, MaxFiles: t.keep, ErrorLog: logger.With("sub", "trace")}
	if t.log {
		opts.Log = logger.With("sub", "apdu")
	}
	tr, err := trace.New(opts)
	if err != nil {
		return nil, fmt.Errorf("APDU tracing: %w", err)
	}
	if t.noRedact {
		logger.Warn("APDU tracing WITHOUT redaction (--trace-no-redact): PINs, keys and authentication data are written as relayed; use it only with test cards, and delete the traces after use")
	}
	logger.Info("tracing APDUs", "pcap", t.pcap, "dir", t.dir, "log", t.log, "cards", t.cards, "redacted", !t.noRedact)
	return tr, nil
}

// apduTracer feeds the relay's exchanges to a trace.Tracer: as a
// server.Tracer every APDU and reset, as a server.Observer the end of
// each card connection (the tracer forgets its redaction state). Card
// IDs are the relay's connection IDs in decimal, as the status page
// shows them and --trace-card takes them.
type apduTracer struct {
	server.NopObserver
	tr *trace.Tracer
}

// TraceAPDU implements server.Tracer. An exchange without an answer is
// traced with SW 0000, so that the trace shows the command and the
// redaction stops trusting what it knew of the card's selected file.
func (a *apduTracer) TraceAPDU(t server.APDUTrace) {
	id := strconv.FormatUint(t.CardID, 10)
	iccid, eid := t.ICCID, t.EID
	if !a.tr.Enabled(id, iccid, eid) {
		return
	}
	if t.Reset {
		if t.Err == "" {
			a.tr.Reset(trace.ResetEvent{Time: t.Start, CardID: id, ICCID: iccid, EID: eid, ATR: t.Response})
		}
		return
	}
	a.tr.APDU(trace.Event{Time: t.Start, CardID: id, ICCID: iccid, EID: eid, Command: t.Command,
		Response: t.Response, SW: t.SW, Duration: t.Duration})
}

// CardChanged implements server.Observer: a card connection's end.
func (a *apduTracer) CardChanged(ev server.CardEvent) {
	if ev.State == "" {
		a.tr.EndCard(strconv.FormatUint(ev.ID, 10))
	}
}

// traceCollector exposes a tracer's counts as metrics.
func traceCollector(tr *trace.Tracer) []prometheus.Collector {
	counter := func(name, help string, get func(trace.Stats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help},
			func() float64 { return float64(get(tr.Stats())) })
	}
	return []prometheus.Collector{
		counter("wsrc_server_trace_events_total", "APDU exchanges and resets written to the traces.",
			func(s trace.Stats) uint64 { return s.Events }),
		counter("wsrc_server_trace_dropped_total", "APDU exchanges not traced because the trace queue was full (the relay never waits for tracing).",
			func(s trace.Stats) uint64 { return s.Dropped }),
		counter("wsrc_server_trace_redacted_total", "Traced APDU exchanges with redacted bytes (PINs, keys, authentication data).",
			func(s trace.Stats) uint64 { return s.Redacted }),
		counter("wsrc_server_trace_write_errors_total", "Failed writes of trace files.",
			func(s trace.Stats) uint64 { return s.WriteErrors }),
	}
}
