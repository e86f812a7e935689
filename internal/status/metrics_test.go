package status

import (
	"math"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/wsrc-go/wsrc/internal/version"
)

// scrape fetches /metrics from a status handler and parses it.
func scrape(t *testing.T, m *Metrics) map[string]*dto.MetricFamily {
	t.Helper()
	srv := serve(t, Options{Source: SourceFunc(fixture), Metrics: m})
	resp, body := get(t, srv, http.MethodGet, PathMetrics)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("Content-Type %q", ct)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parsing /metrics: %v\n%s", err, body)
	}
	return mfs
}

// sample returns the metric of family name whose labels include want
// (name=value pairs), failing the test when there is none or the family
// has another type.
func sample(t *testing.T, mfs map[string]*dto.MetricFamily, name string, typ dto.MetricType, want ...string) *dto.Metric {
	t.Helper()
	mf, ok := mfs[name]
	if !ok {
		t.Fatalf("no metric family %s", name)
	}
	if mf.GetType() != typ {
		t.Fatalf("%s is a %v, want %v", name, mf.GetType(), typ)
	}
	if mf.GetHelp() == "" {
		t.Errorf("%s has no help text", name)
	}
next:
	for _, m := range mf.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		for i := 0; i < len(want); i += 2 {
			if labels[want[i]] != want[i+1] {
				continue next
			}
		}
		return m
	}
	t.Fatalf("%s has no sample with labels %v", name, want)
	return nil
}

func TestMetricsScrape(t *testing.T) {
	m := NewMetrics()

	// A card and two users connect, one user leaves.
	m.ConnOpened(RoleCard)
	m.ConnOpened(RoleUser)
	m.ConnOpened(RoleUser)
	m.ConnClosed(RoleUser)
	m.ConnOpened("bogus") // ignored
	// Three APDUs: 40 µs, 3 ms, 90 s (past the last bucket).
	for _, d := range []time.Duration{40 * time.Microsecond, 3 * time.Millisecond, 90 * time.Second} {
		m.APDURelayed(d)
	}
	m.Error(ErrorRequestTimeout)
	m.Error(ErrorBadMessage)
	m.Error(ErrorBadMessage)
	m.Error(ErrorKind(200)) // out of range: other
	m.IdentifyFailed()
	m.AgentReconnected()
	m.AgentReconnected()

	mfs := scrape(t, m)
	gauge := func(name string, labels ...string) float64 {
		return sample(t, mfs, name, dto.MetricType_GAUGE, labels...).GetGauge().GetValue()
	}
	counter := func(name string, labels ...string) float64 {
		return sample(t, mfs, name, dto.MetricType_COUNTER, labels...).GetCounter().GetValue()
	}
	checks := []struct {
		what      string
		got, want float64
	}{
		{"cards open", gauge(metricConnections, "role", "card"), 1},
		{"users open", gauge(metricConnections, "role", "user"), 1},
		{"cards opened", counter(metricConnectionsOpen, "role", "card"), 1},
		{"users opened", counter(metricConnectionsOpen, "role", "user"), 2},
		{"APDUs", counter(metricAPDUs), 3},
		{"request timeouts", counter(metricErrors, "kind", "request_timeout"), 1},
		{"bad messages", counter(metricErrors, "kind", "bad_message"), 2},
		{"other errors", counter(metricErrors, "kind", "other"), 1},
		{"write errors", counter(metricErrors, "kind", "write"), 0}, // present before the first one
		{"identify failures", counter(metricIdentifyFailed), 1},
		{"reconnects", counter(metricReconnects), 2},
		{"build info", gauge(metricBuildInfo, "version", version.Version), 1},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: %v, want %v", c.what, c.got, c.want)
		}
	}
	if n := len(mfs[metricConnections].GetMetric()); n != 2 {
		t.Errorf("%s has %d role values, want 2 (card, user)", metricConnections, n)
	}
	if n := len(mfs[metricErrors].GetMetric()); n != int(numErrorKinds) {
		t.Errorf("%s has %d kinds, want %d", metricErrors, n, numErrorKinds)
	}

	h := sample(t, mfs, metricLatency, dto.MetricType_HISTOGRAM).GetHistogram()
	if h.GetSampleCount() != 3 || math.Abs(h.GetSampleSum()-(40e-6+3e-3+90)) > 1e-9 {
		t.Errorf("latency: count %d sum %v", h.GetSampleCount(), h.GetSampleSum())
	}
	var bounds []float64
	for _, b := range h.GetBucket() {
		le, n := b.GetUpperBound(), b.GetCumulativeCount()
		bounds = append(bounds, le)
		want := uint64(0)
		if le >= 40e-6 {
			want++
		}
		if le >= 3e-3 {
			want++
		}
		if le >= 90 { // only +Inf, which the text format carries
			want++
		}
		if n != want {
			t.Errorf("latency bucket le=%v: %d, want %d", le, n, want)
		}
	}
	if !slices.Equal(bounds, append(slices.Clone(LatencyBuckets), math.Inf(1))) {
		t.Errorf("latency buckets %v, want %v and +Inf", bounds, LatencyBuckets)
	}

	// The standard collectors are there.
	sample(t, mfs, "go_goroutines", dto.MetricType_GAUGE)
	sample(t, mfs, "process_cpu_seconds_total", dto.MetricType_COUNTER)
}

func TestLatencyBuckets(t *testing.T) {
	if !slices.IsSorted(LatencyBuckets) || LatencyBuckets[0] != 50e-6 || LatencyBuckets[len(LatencyBuckets)-1] != 60 {
		t.Errorf("buckets must rise from 50 µs to 60 s: %v", LatencyBuckets)
	}
}

func TestErrorKindNames(t *testing.T) {
	seen := map[string]bool{}
	for k := range numErrorKinds {
		name := k.String()
		if name == "" || seen[name] || !model.LabelValue(name).IsValid() {
			t.Errorf("kind %d: bad or duplicate name %q", k, name)
		}
		seen[name] = true
	}
	if ErrorKind(numErrorKinds).String() != "other" || ErrorKind(255).String() != "other" {
		t.Error("out-of-range kinds must read as other")
	}
}

// TestMetricsNil checks that a server without metrics may call them.
func TestMetricsNil(t *testing.T) {
	var m *Metrics
	m.ConnOpened(RoleCard)
	m.ConnClosed(RoleCard)
	m.APDURelayed(time.Millisecond)
	m.Error(ErrorWrite)
	m.IdentifyFailed()
	m.AgentReconnected()
}

func TestMetricsConcurrent(t *testing.T) {
	m := NewMetrics()
	const workers, each = 8, 500
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range each {
				m.ConnOpened(RoleCard)
				m.APDURelayed(time.Duration(i) * time.Microsecond)
				m.Error(ErrorKind(i % int(numErrorKinds)))
				m.ConnClosed(RoleCard)
			}
		})
	}
	wg.Wait()
	mfs := scrape(t, m)
	if got := sample(t, mfs, metricAPDUs, dto.MetricType_COUNTER).GetCounter().GetValue(); got != workers*each {
		t.Errorf("APDUs %v, want %d", got, workers*each)
	}
	if got := sample(t, mfs, metricLatency, dto.MetricType_HISTOGRAM).GetHistogram().GetSampleCount(); got != workers*each {
		t.Errorf("latency samples %v, want %d", got, workers*each)
	}
	if got := sample(t, mfs, metricConnections, dto.MetricType_GAUGE, "role", "card").GetGauge().GetValue(); got != 0 {
		t.Errorf("open cards %v, want 0", got)
	}
	if got := sample(t, mfs, metricConnectionsOpen, dto.MetricType_COUNTER, "role", "card").GetCounter().GetValue(); got != workers*each {
		t.Errorf("opened cards %v, want %d", got, workers*each)
	}
}

// TestMetricsNoAllocs checks the hot path: the calls the relay makes per
// APDU and per connection allocate nothing.
func TestMetricsNoAllocs(t *testing.T) {
	m := NewMetrics()
	for name, f := range map[string]func(){
		"APDURelayed": func() { m.APDURelayed(1500 * time.Microsecond) },
		"ConnOpened":  func() { m.ConnOpened(RoleUser) },
		"ConnClosed":  func() { m.ConnClosed(RoleUser) },
		"Error":       func() { m.Error(ErrorCardAgent) },
	} {
		if n := testing.AllocsPerRun(1000, f); n != 0 {
			t.Errorf("%s: %v allocations per call, want 0", name, n)
		}
	}
}

func BenchmarkAPDURelayed(b *testing.B) {
	m := NewMetrics()
	b.ReportAllocs()
	for b.Loop() {
		m.APDURelayed(1500 * time.Microsecond)
	}
}

func BenchmarkAPDURelayedParallel(b *testing.B) {
	m := NewMetrics()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.APDURelayed(1500 * time.Microsecond)
		}
	})
}

func BenchmarkConnOpenedClosed(b *testing.B) {
	m := NewMetrics()
	b.ReportAllocs()
	for b.Loop() {
		m.ConnOpened(RoleCard)
		m.ConnClosed(RoleCard)
	}
}
