package daemon

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/wsrc-go/wsrc/agent"
	"github.com/wsrc-go/wsrc/card/sim"
	"github.com/wsrc-go/wsrc/client"
	"github.com/wsrc-go/wsrc/internal/auth"
	"github.com/wsrc-go/wsrc/internal/status"
	"github.com/wsrc-go/wsrc/internal/testenv/wstest"
	"github.com/wsrc-go/wsrc/server"
)

// simAgent runs a wsrc-agent session with a simulated card (default
// ICCID and EID) against the card port at addr, until the test ends.
func simAgent(t *testing.T, addr, name string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	logger := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})).With("side", "agent")
	s := agent.NewSession(agent.Config{Server: "ws://" + addr + "/", Agent: name, Logger: logger}, sim.New(sim.Config{}), "Simulated reader 0")
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	})
}

// dialUser connects a client to the user port and selects the simulated
// card by its ICCID.
func dialUser(t *testing.T, addr string) *client.Client {
	t.Helper()
	ctx := t.Context()
	c, err := client.Dial(ctx, "ws://"+addr+"/")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Select(ctx, "iccid", sim.DefaultICCID); err != nil {
		t.Fatal(err)
	}
	return c
}

// transmit sends the command APDUs (hex) and returns the status words.
func transmit(t *testing.T, c *client.Client, cmds ...string) []uint16 {
	t.Helper()
	var sws []uint16
	for _, h := range cmds {
		cmd, err := hex.DecodeString(strings.ReplaceAll(h, " ", ""))
		if err != nil {
			t.Fatal(err)
		}
		_, sw, err := c.Transmit(t.Context(), cmd)
		if err != nil {
			t.Fatalf("transmit %s: %v", h, err)
		}
		sws = append(sws, sw)
	}
	return sws
}

// get fetches a URL with an optional Host header and returns status and
// body.
func get(t *testing.T, url, host string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// scrape fetches and parses /metrics.
func scrape(t *testing.T, statusAddr string) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := get(t, "http://"+statusAddr+status.PathMetrics, "")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parsing /metrics: %v\n%s", err, body)
	}
	return mfs
}

// value returns the value of the sample of family name whose labels
// include the name=value pairs in labels: a counter's, gauge's, or a
// histogram's sample count.
func value(t *testing.T, mfs map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	t.Helper()
	mf, ok := mfs[name]
	if !ok {
		t.Fatalf("no metric %s", name)
	}
next:
	for _, m := range mf.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if have[labels[i]] != labels[i+1] {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	t.Fatalf("no sample of %s with %v", name, labels)
	return 0
}

// APDUs relayed through the real server, from a real agent with a
// simulated card to a real client, show up in a real scrape of /metrics
// and in /api/v1/status.
func TestStatusAfterRelay(t *testing.T) {
	s, o, ex := testSettings(t, "")
	r := start(t, s, o, ex)
	if r.status == "" {
		t.Fatal("no status listener in the log")
	}
	simAgent(t, r.card, "pi")
	r.log.waitFor(t, "card ready", 1)
	user := dialUser(t, r.user)
	const n = 5
	transmit(t, user, "00a40004023f00", "00a40004022fe2", "00b000000a", "00a40004023f00", "00f2000000")

	mfs := scrape(t, r.status)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"wsrc_server_apdus_relayed_total", nil, n},
		{"wsrc_server_apdu_latency_seconds", nil, n},
		{"wsrc_server_connections", []string{"role", "card"}, 1},
		{"wsrc_server_connections", []string{"role", "user"}, 1},
		{"wsrc_server_connections_opened_total", []string{"role", "card"}, 1},
		{"wsrc_server_connections_opened_total", []string{"role", "user"}, 1},
		{"wsrc_server_identify_failures_total", nil, 0},
		{"wsrc_server_agent_reconnects_total", nil, 0},
		{"wsrc_server_errors_total", []string{"kind", "select"}, 0},
	} {
		if got := value(t, mfs, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if _, ok := mfs["wsrc_server_trace_dropped_total"]; ok {
		t.Error("trace metrics without tracing")
	}
	// A mistake by the user is counted by kind.
	if _, err := user.Select(t.Context(), "iccid", sim.DefaultICCID); err == nil {
		t.Fatal("a second select_card succeeded")
	}
	if got := value(t, scrape(t, r.status), "wsrc_server_errors_total", "kind", "unexpected_message"); got != 1 {
		t.Errorf("unexpected_message errors = %v, want 1", got)
	}

	code, body := get(t, "http://"+r.status+status.PathStatus, "")
	if code != http.StatusOK {
		t.Fatalf("GET %s: %d %s", status.PathStatus, code, body)
	}
	var snap status.Snapshot
	if err := json.Unmarshal([]byte(body), &snap); err != nil {
		t.Fatal(err)
	}
	if len(snap.Cards) != 1 || len(snap.Users) != 1 || len(snap.Agents) != 1 {
		t.Fatalf("status:\n%s", body)
	}
	c, u := snap.Cards[0], snap.Users[0]
	if c.Identities["ICCID"] != sim.DefaultICCID || c.Identities["EID"] != sim.DefaultEID || c.State != status.StateAssociated ||
		c.APDUs != n || c.Agent != "pi" || c.Reader != "Simulated reader 0" || c.User == nil || *c.User != u.ID ||
		u.Card == nil || *u.Card != c.ID || snap.Agents[0].Name != "pi" {
		t.Errorf("status:\n%s", body)
	}
	for path, want := range map[string]string{"/healthz": "ok\n", "/readyz": "ready\n"} {
		if code, body := get(t, "http://"+r.status+path, ""); code != http.StatusOK || body != want {
			t.Errorf("GET %s: %d %q", path, code, body)
		}
	}
	if code, body := get(t, "http://"+r.status+"/", ""); code != http.StatusOK || !strings.Contains(body, "<html") {
		t.Errorf("GET /: %d %.100s", code, body)
	}
}

// A card agent that loses its connection and comes back counts as a
// reconnect; one that closed its connection and comes back does not.
func TestAgentReconnectMetric(t *testing.T) {
	s, o, ex := testSettings(t, "")
	r := start(t, s, o, ex)
	hello := `{"msg_type":"hello","client_type":"card","atr":"3b00","agent":"pi","reader":"r0"}`
	connect := func() *wstest.Peer {
		card := wstest.Dial(t, "ws://"+r.card+"/")
		card.Send(hello)
		card.Recv() // hello_ack
		for range 2 {
			card.Recv() // SELECT ISD-R, SELECT MF
			card.Send(`{"response": "", "sw": "6a82", "msg_type": "r_apdu"}`)
		}
		card.Recv() // ready
		return card
	}
	reconnects := func() float64 { return value(t, scrape(t, r.status), "wsrc_server_agent_reconnects_total") }

	connect().Drop() // lost: no close frame
	r.log.waitFor(t, "card connection ended", 1)
	card := connect()
	if got := reconnects(); got != 1 {
		t.Fatalf("reconnects after a lost connection = %v, want 1", got)
	}
	card.Close(1000, "card removed")
	r.log.waitFor(t, "card connection ended", 2)
	card = connect()
	if got := reconnects(); got != 1 {
		t.Fatalf("reconnects after a clean close = %v, want still 1", got)
	}
	// A stale connection replaced by the agent's new one: a reconnect.
	connect()
	card.WaitClosed()
	if got := reconnects(); got != 2 {
		t.Fatalf("reconnects after a replaced connection = %v, want 2", got)
	}
}

// The loopback status listener refuses Host headers that are not
// loopback's (DNS rebinding), unless allowed by name.
func TestStatusHostCheck(t *testing.T) {
	s, o, ex := testSettings(t, "", "--status-allowed-host", "Status.Example.org")
	r := start(t, s, o, ex)
	_, port, _ := strings.Cut(r.status, ":")
	for _, tc := range []struct {
		host string
		want int
	}{
		{"", http.StatusOK}, // Go sends the URL's 127.0.0.1:port
		{"localhost:" + port, http.StatusOK},
		{"LOCALHOST", http.StatusOK},
		{"127.0.0.1", http.StatusOK},
		{"[::1]:" + port, http.StatusOK},
		{"status.example.org", http.StatusOK},
		{"status.example.org:443", http.StatusOK},
		{"attacker.example:" + port, http.StatusMisdirectedRequest},
		{"localhost.attacker.example", http.StatusMisdirectedRequest},
		{"192.0.2.1:" + port, http.StatusMisdirectedRequest},
	} {
		code, body := get(t, "http://"+r.status+status.PathStatus, tc.host)
		if code != tc.want {
			t.Errorf("Host %q: %d, want %d: %s", tc.host, code, tc.want, body)
		}
		if code == http.StatusMisdirectedRequest && !strings.Contains(body, "DNS rebinding") {
			t.Errorf("Host %q: refusal does not say why: %s", tc.host, body)
		}
	}
}

// Off loopback the status listener wants an admin's credentials.
func TestStatusGuardAuth(t *testing.T) {
	admin := cheapHash(t, "adminpw")
	store, err := auth.NewStore([]auth.User{
		{Name: "root", PasswordHash: admin, Admin: true, AllCards: true},
		{Name: "alice", TokenHashes: []auth.TokenHash{auth.HashToken(tokUser)}, AllCards: true},
		{Name: "prom", TokenHashes: []auth.TokenHash{auth.HashToken(tokAgent)}, Admin: true},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var sw authSwitch
	sw.p.Store(&accounts{store: store, admins: 2})
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "secret status") })
	g := &statusGuard{next: ok, auth: &sw, throttle: auth.NewThrottle(3, time.Hour), log: slog.New(slog.DiscardHandler)}
	srv := httptest.NewServer(g)
	defer srv.Close()
	do := func(set func(*http.Request)) (int, http.Header) {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, srv.URL+"/metrics", nil)
		set(req)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode, resp.Header
	}
	for _, tc := range []struct {
		name string
		set  func(*http.Request)
		want int
	}{
		{"admin password", func(r *http.Request) { r.SetBasicAuth("root", "adminpw") }, http.StatusOK},
		{"admin token", func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+tokAgent) }, http.StatusOK},
		{"no credentials", func(*http.Request) {}, http.StatusUnauthorized},
		{"not an admin", func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+tokUser) }, http.StatusForbidden},
		{"wrong password", func(r *http.Request) { r.SetBasicAuth("root", "nope") }, http.StatusUnauthorized},
	} {
		code, h := do(tc.set)
		if code != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, code, tc.want)
		}
		if code == http.StatusUnauthorized && !strings.Contains(strings.Join(h.Values("WWW-Authenticate"), " "), `realm="wsrc status"`) {
			t.Errorf("%s: challenge %q", tc.name, h.Values("WWW-Authenticate"))
		}
	}
	for _, path := range []string{status.PathHealthz, status.PathReadyz} {
		if code, _ := get(t, srv.URL+path, ""); code != http.StatusOK {
			t.Errorf("%s without credentials: %d, want 200 (probes bring none)", path, code)
		}
	}
	// Three failures are the burst: the address is throttled now, even
	// with good credentials.
	do(func(r *http.Request) { r.SetBasicAuth("root", "nope") })
	do(func(r *http.Request) { r.SetBasicAuth("root", "nope") })
	if code, h := do(func(r *http.Request) { r.SetBasicAuth("root", "adminpw") }); code != http.StatusTooManyRequests || h.Get("Retry-After") == "" {
		t.Errorf("after failures: %d %v, want 429 with Retry-After", code, h)
	}
	// Without admin users, insecure_no_auth leaves it open; otherwise
	// nobody gets in.
	sw.p.Store(&accounts{})
	g.throttle = auth.NewThrottle(3, time.Hour)
	if code, _ := do(func(*http.Request) {}); code != http.StatusUnauthorized {
		t.Errorf("no admins: %d, want 401", code)
	}
	g.insecure = true
	if code, _ := do(func(*http.Request) {}); code != http.StatusOK {
		t.Errorf("no admins, insecure: %d, want 200", code)
	}
	// A loopback guard does not ask for credentials (it checks Host).
	g.insecure, g.loopback = false, true
	sw.p.Store(&accounts{store: store, admins: 2})
	if code, _ := do(func(*http.Request) {}); code != http.StatusOK {
		t.Errorf("loopback: %d, want 200", code)
	}
}

// The status listener off loopback needs an admin user (or
// insecure_no_auth); allowed host names are checked.
func TestStatusConfig(t *testing.T) {
	s, err := resolveWith(t, "", nil)
	if err != nil || s.status.bind != "127.0.0.1:4223" {
		t.Fatalf("default: %v %+v", err, s.status)
	}
	if s, err := resolveWith(t, "", map[string]string{"WSRC_SERVER_STATUS_BIND": ""}); err != nil || s.status.bind != "" {
		t.Fatalf("disabled by the environment: %v %+v", err, s.status)
	}
	_, err = resolveWith(t, "", nil, "--status-bind", "0.0.0.0:4223")
	if err == nil || !strings.Contains(err.Error(), "--status-bind (or WSRC_SERVER_STATUS_BIND): the status listener would show card identities") {
		t.Fatalf("open status: %v", err)
	}
	if _, err := resolveWith(t, "", nil, "--status-bind", "0.0.0.0:4223", "--insecure-no-auth"); err != nil {
		t.Fatalf("insecure: %v", err)
	}
	path := writeConfig(t, `
[status]
bind = ":9100"
allowed_hosts = ["status.example.org", "192.0.2.7", "[2001:db8::1]"]
[[user]]
name = "root"
password_hash = "`+cheapHash(t, "pw")+`"
admin = true
`)
	s, err = resolveWith(t, path, nil)
	if err != nil || s.status.bind != ":9100" || strings.Join(s.status.allowedHosts, " ") != "status.example.org 192.0.2.7 2001:db8::1" || s.admins != 1 {
		t.Fatalf("%v %+v", err, s.status)
	}
	for text, want := range map[string]string{
		"[status]\nbind = \"4223\"\n":                                 ":2: status.bind: \"4223\" is not host:port",
		"[status]\nbind = \"127.0.0.1:http\"\n":                       ":2: status.bind: \"127.0.0.1:http\": \"http\" is not a TCP port",
		"[status]\nallowed_hosts = [\"ok.example\", \"https://x\"]\n": ":2: status.allowed_hosts[1]: \"https://x\" is not a host name",
		"[status]\nallowed_hosts = [\"x.example:4223\"]\n":            "is not a host name",
	} {
		if _, err := resolveWith(t, writeConfig(t, text), nil); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", text, err, want)
		}
	}
	if _, err := resolveWith(t, "", nil, "--status-allowed-host", "a.example,b/c"); err == nil ||
		!strings.Contains(err.Error(), "--status-allowed-host (or WSRC_SERVER_STATUS_ALLOWED_HOST)") {
		t.Errorf("bad flag: %v", err)
	}
}

// The Observer adapter maps every event kind onto the metrics.
func TestMetricsObserver(t *testing.T) {
	m := status.NewMetrics()
	o := newMetricsObserver(m)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	o.now = func() time.Time { return now }
	o.Connected(server.ConnEvent{ID: 1, Port: server.PortCard})
	o.Connected(server.ConnEvent{ID: 2, Port: server.PortUser})
	o.Disconnected(server.ConnEvent{ID: 2, Port: server.PortUser}, "bye")
	o.Relayed(server.RequestEvent{Type: "c_apdu", Duration: time.Millisecond, Outcome: server.OutcomeOK})
	o.Relayed(server.RequestEvent{Type: "reset_req", Outcome: server.OutcomeOK}) // not an APDU
	o.Relayed(server.RequestEvent{Type: "c_apdu", Outcome: server.OutcomeAgentErr})
	o.Relayed(server.RequestEvent{Type: "c_apdu", Outcome: server.OutcomeTimeout})
	o.Relayed(server.RequestEvent{Type: "c_apdu", Outcome: server.OutcomeGone})
	for _, r := range []server.RefusalReason{server.RefusedNoCredentials, server.RefusedBadCredential, server.RefusedThrottled,
		server.RefusedPortFull, server.RefusedAddrFull, server.RefusedRateLimited, server.RefusedRateClosed, server.RefusedCard, server.RefusedDuplicate, server.RefusedPending,
		server.RefusedShuttingDown} {
		o.Refused(server.Refusal{Reason: r})
	}
	for _, k := range []server.ProblemKind{server.ProblemBadMessage, server.ProblemUnexpected, server.ProblemHello,
		server.ProblemIdentify, server.ProblemSelect, server.ProblemKeepalive, server.ProblemWrite, server.ProblemTooBig,
		server.ProblemUpgrade, "new_kind"} {
		o.Problem(server.ConnEvent{}, k)
	}
	// pySim's card client names nothing: address and ATR are the key.
	ready := server.CardEvent{ID: 1, State: "ready", Remote: "192.0.2.1:5000", Identities: map[string]string{"ATR": "3b00"}}
	o.CardChanged(server.CardEvent{ID: 1, State: "init", Remote: "192.0.2.1:5000", Identities: map[string]string{"ATR": "3b00"}})
	o.CardChanged(ready)
	o.CardChanged(server.CardEvent{ID: 1, Remote: "192.0.2.1:5000", Lost: true})
	o.CardChanged(server.CardEvent{ID: 3, State: "init", Remote: "192.0.2.1:5001", Identities: map[string]string{"ATR": "3b00"}})
	o.CardChanged(server.CardEvent{ID: 4, State: "init", Remote: "192.0.2.2:5001", Identities: map[string]string{"ATR": "3b00"}})
	if len(o.keys) != 2 {
		t.Errorf("%d keys kept, want 2 (cards 3 and 4)", len(o.keys))
	}

	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	mfs := scrape(t, strings.TrimPrefix(srv.URL, "http://")+"/x") // the handler serves any path
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"wsrc_server_connections", []string{"role", "card"}, 1},
		{"wsrc_server_connections", []string{"role", "user"}, 0},
		{"wsrc_server_apdus_relayed_total", nil, 1},
		{"wsrc_server_identify_failures_total", nil, 1},
		{"wsrc_server_agent_reconnects_total", nil, 1},
		{"wsrc_server_errors_total", []string{"kind", "card_agent"}, 1},
		{"wsrc_server_errors_total", []string{"kind", "request_timeout"}, 1},
		{"wsrc_server_errors_total", []string{"kind", "auth"}, 2},
		{"wsrc_server_errors_total", []string{"kind", "throttled"}, 1},
		{"wsrc_server_errors_total", []string{"kind", "conn_limit"}, 3}, // port, address, pending
		{"wsrc_server_errors_total", []string{"kind", "rate_limit"}, 2},
		{"wsrc_server_errors_total", []string{"kind", "card_not_allowed"}, 1},
		{"wsrc_server_errors_total", []string{"kind", "duplicate_card"}, 1},
		{"wsrc_server_errors_total", []string{"kind", "bad_message"}, 1},
		{"wsrc_server_errors_total", []string{"kind", "unexpected_message"}, 1},
		{"wsrc_server_errors_total", []string{"kind", "hello"}, 1},
		{"wsrc_server_errors_total", []string{"kind", "select"}, 1},
		{"wsrc_server_errors_total", []string{"kind", "keepalive"}, 1},
		{"wsrc_server_errors_total", []string{"kind", "write"}, 1},
		{"wsrc_server_errors_total", []string{"kind", "too_big"}, 1},
		{"wsrc_server_errors_total", []string{"kind", "upgrade"}, 1},
		{"wsrc_server_errors_total", []string{"kind", "other"}, 1},
	} {
		if got := value(t, mfs, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
}

// healthcheck asks the status listener, found as the server finds it.
func TestHealthcheck(t *testing.T) {
	lookupEnv = noEnv
	t.Cleanup(func() { lookupEnv = os.LookupEnv })
	s, o, ex := testSettings(t, "")
	r := start(t, s, o, ex)
	var out, errOut bytes.Buffer
	if code := run(t.Context(), []string{"healthcheck", "--config", "", "--status-bind", r.status}, stdio{nil, &out, &errOut}, nil); code != exitOK || out.String() != "ok\n" {
		t.Fatalf("healthcheck: %d %q %q", code, out.String(), errOut.String())
	}
	_, port, _ := strings.Cut(r.status, ":")
	if code := run(t.Context(), []string{"healthcheck", "--config", "", "--status-bind", "localhost:" + port}, discard, nil); code != exitOK {
		t.Fatalf("healthcheck via localhost: %d", code)
	}
	r.stop(t)
	errOut.Reset()
	if code := run(t.Context(), []string{"healthcheck", "--config", "", "--status-bind", r.status}, stdio{nil, io.Discard, &errOut}, nil); code != exitFailure {
		t.Fatalf("healthcheck of a stopped server: %d %s", code, errOut.String())
	}
	if code := run(t.Context(), []string{"healthcheck", "--config", "", "--status-bind", ""}, discard, nil); code != exitUsage {
		t.Fatalf("healthcheck without a status listener: %d", code)
	}
}

// /readyz: not ready while a port waits for accounts, nor once the
// shutdown has begun.
func TestAppReady(t *testing.T) {
	a := &app{srv: server.New(server.Config{}, nil), gates: map[string]*portGate{portUser: {}, portCard: {}, portStatus: {}},
		log: slog.New(slog.DiscardHandler), s: &settings{}, sd: newStatusNotifier()}
	if err := a.ready(); err != nil {
		t.Fatalf("ready: %v", err)
	}
	a.setGates(map[string]error{portCard: errors.New("the card port listens on 0.0.0.0:4221 but has no authentication")})
	if err := a.ready(); err == nil || !strings.Contains(err.Error(), "not serving the card port") {
		t.Fatalf("with the card port closed: %v", err)
	}
	if n := a.sd.note.Load(); n == nil || *n != "NOT SERVING the card port(s): no accounts, see the log" {
		t.Fatalf("status note %v", n)
	}
	a.setGates(nil)
	if err := a.ready(); err != nil {
		t.Fatalf("reopened: %v", err)
	}
	a.draining.Store(true)
	if err := a.ready(); err == nil || err.Error() != "shutting down" {
		t.Fatalf("draining: %v", err)
	}
}

// hostCases are Host headers and whether a loopback listener that also
// allows status.example.org accepts them.
var hostCases = map[string]bool{
	"localhost": true, "localhost:4223": true, "LocalHost:1": true, "127.0.0.1": true, "127.0.0.1:4223": true,
	"127.9.9.9": true, "[::1]:4223": true, "[::1]": true, "::1": true, "[::ffff:127.0.0.1]:1": true,
	"status.example.org": true, "STATUS.example.org:80": true,
	"": false, ":4223": false, "attacker.example": false, "localhost.attacker.example": false, "192.0.2.1": false,
	"[2001:db8::1]:4223": false, "0.0.0.0": false, "status.example.org.": false, "localhost:4223:1": false,
}

func TestHostAllowed(t *testing.T) {
	g := &statusGuard{loopback: true, allowed: []string{"status.example.org"}}
	for host, want := range hostCases {
		if got := g.hostAllowed(host); got != want {
			t.Errorf("hostAllowed(%q) = %v, want %v", host, got, want)
		}
	}
	off := &statusGuard{}
	if !off.hostAllowed("anything.example") {
		t.Error("off loopback without allowed names, any Host should do")
	}
	off.allowed = []string{"status.example.org"}
	if off.hostAllowed("localhost") || !off.hostAllowed("status.example.org:443") {
		t.Error("off loopback with allowed names, only those")
	}
}

// FuzzHostAllowed: a Host header from the network never panics, and one
// that is accepted names loopback or the allowed name.
func FuzzHostAllowed(f *testing.F) {
	for host := range hostCases {
		f.Add(host)
	}
	g := &statusGuard{loopback: true, allowed: []string{"status.example.org"}}
	f.Fuzz(func(t *testing.T, host string) {
		if !g.hostAllowed(host) {
			return
		}
		h := host
		if hh, _, err := net.SplitHostPort(host); err == nil {
			h = hh
		}
		h = strings.ToLower(strings.Trim(h, "[]"))
		a, err := netip.ParseAddr(h)
		if h != "localhost" && h != "status.example.org" && (err != nil || !a.Unmap().IsLoopback()) {
			t.Errorf("accepted Host %q", host)
		}
	})
}
