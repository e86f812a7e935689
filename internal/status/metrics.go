package status

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wsrc-go/wsrc/internal/version"
)

// Role is the kind of a connection: which port it came in on.
type Role string

// Roles, spelt as package server spells them.
const (
	RoleCard Role = "card" // a card agent, on the card port
	RoleUser Role = "user" // a user, on the user port
)

// ErrorKind classifies the errors Metrics counts. The set is closed, so
// the label has a bounded number of values; a value outside it counts as
// ErrorOther.
type ErrorKind uint8

// Error kinds: the wsrc_server_errors_total label values in parentheses.
const (
	// ErrorOther is anything not listed below ("other").
	ErrorOther ErrorKind = iota
	// ErrorBadMessage: a peer sent a message that does not decode (bad
	// JSON, unknown msg_type, bad hex...) ("bad_message").
	ErrorBadMessage
	// ErrorUnexpectedMessage: a well-formed message not valid in the
	// connection's state, e.g. c_apdu before select_card
	// ("unexpected_message").
	ErrorUnexpectedMessage
	// ErrorHello: a connection ended before or at its hello (timeout,
	// wrong client_type, missing ATR) ("hello").
	ErrorHello
	// ErrorSelect: select_card found no ready card ("select").
	ErrorSelect
	// ErrorCardAgent: a card agent answered a relayed request with an
	// error message ("card_agent").
	ErrorCardAgent
	// ErrorRequestTimeout: a card agent did not answer a relayed
	// request within Config.RequestTimeout ("request_timeout").
	ErrorRequestTimeout
	// ErrorKeepalive: a peer did not answer a keepalive ping in time
	// ("keepalive").
	ErrorKeepalive
	// ErrorWrite: a write to a peer failed or timed out (a slow peer)
	// ("write").
	ErrorWrite
	// ErrorTooBig: a peer sent a message over the size limit
	// ("too_big").
	ErrorTooBig
	// ErrorConnLimit: a connection was refused because its port was at
	// its limit ("conn_limit").
	ErrorConnLimit
	// ErrorUpgrade: a request to a WSRC port was not a valid WebSocket
	// upgrade ("upgrade").
	ErrorUpgrade
	// ErrorAuth: an upgrade request was refused with 401, for missing,
	// wrong or malformed credentials ("auth").
	ErrorAuth
	// ErrorThrottled: an upgrade request was refused with 429 after too
	// many failed authentications from its address ("throttled").
	ErrorThrottled
	// ErrorRateLimit: a peer's message was dropped, or the peer closed,
	// for exceeding the message rate limit ("rate_limit").
	ErrorRateLimit
	// ErrorCardNotAllowed: a card agent registered a card its rules
	// exclude, and was closed ("card_not_allowed").
	ErrorCardNotAllowed
	// ErrorDuplicateCard: a card agent presented a card whose ICCID or
	// EID another agent's listed card has, and was closed
	// ("duplicate_card").
	ErrorDuplicateCard

	numErrorKinds // must stay last
)

var errorKindNames = [numErrorKinds]string{
	ErrorOther:             "other",
	ErrorBadMessage:        "bad_message",
	ErrorUnexpectedMessage: "unexpected_message",
	ErrorHello:             "hello",
	ErrorSelect:            "select",
	ErrorCardAgent:         "card_agent",
	ErrorRequestTimeout:    "request_timeout",
	ErrorKeepalive:         "keepalive",
	ErrorWrite:             "write",
	ErrorTooBig:            "too_big",
	ErrorConnLimit:         "conn_limit",
	ErrorUpgrade:           "upgrade",
	ErrorAuth:              "auth",
	ErrorThrottled:         "throttled",
	ErrorRateLimit:         "rate_limit",
	ErrorCardNotAllowed:    "card_not_allowed",
	ErrorDuplicateCard:     "duplicate_card",
}

// String returns the kind's label value.
func (k ErrorKind) String() string {
	if k >= numErrorKinds {
		k = ErrorOther
	}
	return errorKindNames[k]
}

// LatencyBuckets are the upper bounds, in seconds, of the APDU latency
// histogram: from 50 µs (a simulated card on loopback) through tens of
// milliseconds (a real card, a network round trip) to 60 s (eUICC
// crypto on slow cards, just under the default 120 s request timeout,
// which lands in +Inf).
var LatencyBuckets = []float64{
	50e-6, 100e-6, 250e-6, 500e-6,
	1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
	1, 2.5, 5, 10, 30, 60,
}

// Metric names; see NewMetrics for their meaning.
const (
	metricConnections     = "wsrc_server_connections"
	metricConnectionsOpen = "wsrc_server_connections_opened_total"
	metricAPDUs           = "wsrc_server_apdus_relayed_total"
	metricLatency         = "wsrc_server_apdu_latency_seconds"
	metricErrors          = "wsrc_server_errors_total"
	metricIdentifyFailed  = "wsrc_server_identify_failures_total"
	metricReconnects      = "wsrc_server_agent_reconnects_total"
	metricBuildInfo       = "wsrc_server_build_info"
)

// Metrics are the relay's Prometheus metrics. The server calls its
// methods as events happen; all of them are safe for concurrent use and
// allocation-free (label values are resolved once, in NewMetrics). A nil
// *Metrics accepts every call and does nothing, so a server may run
// without metrics.
type Metrics struct {
	reg *prometheus.Registry

	// Resolved label children, read-only after NewMetrics:
	conns          [2]prometheus.Gauge   // by role: card, user
	opened         [2]prometheus.Counter // by role
	apdus          prometheus.Counter
	latency        prometheus.Histogram
	errors         [numErrorKinds]prometheus.Counter
	identifyFailed prometheus.Counter
	reconnects     prometheus.Counter
}

// NewMetrics returns the relay's metrics in a registry of their own,
// together with the Go runtime and process collectors and a build-info
// gauge carrying internal/version.Version:
//
//	wsrc_server_connections{role}              gauge: open connections (role card or user)
//	wsrc_server_connections_opened_total{role} counter: connections accepted
//	wsrc_server_apdus_relayed_total            counter: command APDUs answered by a card
//	wsrc_server_apdu_latency_seconds           histogram: from relaying c_apdu to the card agent to its r_apdu
//	wsrc_server_errors_total{kind}             counter: errors, by ErrorKind
//	wsrc_server_identify_failures_total        counter: card identifications that failed
//	wsrc_server_agent_reconnects_total         counter: card agents that came back after losing their connection
//	wsrc_server_build_info{version}            gauge, always 1
//	go_*, process_*                            the standard collectors
func NewMetrics() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	conns := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: metricConnections,
		Help: "Open WebSocket connections, by role (card: card agents, user: users).",
	}, []string{"role"})
	opened := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: metricConnectionsOpen,
		Help: "WebSocket connections accepted, by role.",
	}, []string{"role"})
	for i, r := range []Role{RoleCard, RoleUser} {
		m.conns[i] = conns.WithLabelValues(string(r))
		m.opened[i] = opened.WithLabelValues(string(r))
	}
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	m.apdus = counter(metricAPDUs, "Command APDUs relayed to a card agent and answered.")
	m.latency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    metricLatency,
		Help:    "Time from relaying a command APDU to the card agent to receiving its response.",
		Buckets: LatencyBuckets,
	})
	errs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: metricErrors,
		Help: "Errors, by kind (a closed set: see package status, ErrorKind).",
	}, []string{"kind"})
	for k := range numErrorKinds {
		m.errors[k] = errs.WithLabelValues(k.String())
	}
	m.identifyFailed = counter(metricIdentifyFailed, "Card identifications (reading EID, ICCID and IMSI) that failed.")
	m.reconnects = counter(metricReconnects, "Card agents that connected again after losing their connection.")
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: metricBuildInfo,
		Help: "Always 1; the label carries the server's version.",
	}, []string{"version"})
	build.WithLabelValues(version.Version).Set(1)
	m.reg.MustRegister(conns, opened, m.apdus, m.latency, errs, m.identifyFailed, m.reconnects, build,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// Registry returns the registry holding the metrics, for a caller that
// wants to add collectors of its own.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the metrics in the Prometheus exposition formats.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		// Errors while gathering are reported in the response and
		// counted in promhttp_metric_handler_errors_total.
		Registry:          m.reg,
		ErrorHandling:     promhttp.ContinueOnError,
		EnableOpenMetrics: true,
	})
}

// roleIndex maps a role to its slot in conns and opened; -1 for an
// unknown role.
func roleIndex(r Role) int {
	switch r {
	case RoleCard:
		return 0
	case RoleUser:
		return 1
	}
	return -1
}

// ConnOpened counts a new connection of role r (RoleCard or RoleUser;
// other roles are ignored).
func (m *Metrics) ConnOpened(r Role) {
	if i := roleIndex(r); m != nil && i >= 0 {
		m.conns[i].Inc()
		m.opened[i].Inc()
	}
}

// ConnClosed counts the end of a connection that ConnOpened counted.
func (m *Metrics) ConnClosed(r Role) {
	if i := roleIndex(r); m != nil && i >= 0 {
		m.conns[i].Dec()
	}
}

// APDURelayed counts one command APDU answered by a card, d after it was
// relayed to the card agent.
func (m *Metrics) APDURelayed(d time.Duration) {
	if m == nil {
		return
	}
	m.apdus.Inc()
	m.latency.Observe(d.Seconds())
}

// Error counts one error of kind k (out of range: ErrorOther).
func (m *Metrics) Error(k ErrorKind) {
	if m == nil {
		return
	}
	if k >= numErrorKinds {
		k = ErrorOther
	}
	m.errors[k].Inc()
}

// IdentifyFailed counts a card identification that failed (the card
// stays usable by ATR, or its connection is closed).
func (m *Metrics) IdentifyFailed() {
	if m != nil {
		m.identifyFailed.Inc()
	}
}

// AgentReconnected counts a card agent that connected again after
// losing its connection (see Reconnects for one way to tell).
func (m *Metrics) AgentReconnected() {
	if m != nil {
		m.reconnects.Inc()
	}
}
