package daemon

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/wsrc-go/wsrc/internal/auth"
	"github.com/wsrc-go/wsrc/internal/status"
	"github.com/wsrc-go/wsrc/protocol"
	"github.com/wsrc-go/wsrc/server"
)

// The status listener (package internal/status: live page, JSON,
// Prometheus metrics, health checks) on a port of its own, 4223 on
// loopback by default. What this file adds around it:
//
//   - metricsObserver turns the relay's events (server.Observer) into
//     status.Metrics calls; statusSource turns server.Snapshot into
//     status.Snapshot.
//   - statusGuard protects the listener. On loopback it accepts only
//     requests whose Host header names loopback (localhost, 127.0.0.1,
//     [::1], with any port) or one of status.allowed_hosts: a web page
//     whose DNS name an attacker re-points to 127.0.0.1 (DNS rebinding)
//     sends its own name and is refused. Off loopback it asks for an
//     admin user's credentials, as the user port takes them (Basic or
//     Bearer), with the same throttle of failed attempts; without admin
//     users such a listener is refused at start unless insecure_no_auth.

// statusConfig resolves the [status] settings and --status-* flags.
func (s *settings) statusConfig(p *problems, o options, fc *fileConfig, pick picker, def func(string) bool) {
	s.status.bind = pick("status-bind", def("status.bind"), fc.Status.Bind, o.statusBind).(string)
	hosts, fromFlag := fc.Status.AllowedHosts, s.flagSet("status-allowed-host")
	if fromFlag {
		hosts = o.statusHosts
	}
	for i, h := range hosts {
		key := "status.allowed_hosts"
		if !fromFlag {
			key = fmt.Sprintf("status.allowed_hosts[%d]", i)
		}
		if err := checkAllowedHost(h); err != nil {
			p.add(key, "%v", err)
			continue
		}
		s.status.allowedHosts = append(s.status.allowedHosts, strings.ToLower(strings.Trim(h, "[]")))
	}
	if s.status.bind == "" {
		return
	}
	host, port, err := net.SplitHostPort(s.status.bind)
	if err != nil {
		p.add("status.bind", "%q is not host:port (e.g. %q; \"\" disables the status listener)", s.status.bind, defaultStatusBind)
		return
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		p.add("status.bind", "%q: %q is not a TCP port", s.status.bind, port)
	}
	if !loopbackHost(host) && s.admins == 0 && !s.insecureNoAuth {
		p.add("status.bind", "the status listener would show card identities and addresses to anyone on %q: configure an admin user ([[user]] with admin = true), bind it to loopback, or set insecure_no_auth (--insecure-no-auth)", host)
	}
}

// checkAllowedHost accepts a host name or IP address without port.
func checkAllowedHost(h string) error {
	if _, err := netip.ParseAddr(strings.Trim(h, "[]")); err == nil {
		return nil
	}
	if h == "" || len(h) > 253 {
		return fmt.Errorf("%q is not a host name", h)
	}
	for _, c := range h {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return fmt.Errorf("%q is not a host name (name it without scheme, port or path: \"status.example.org\")", h)
		}
	}
	return nil
}

// statusGuard is the status listener's gate: the Host check on loopback,
// admin credentials off loopback (see the top of this file).
type statusGuard struct {
	next     http.Handler
	loopback bool        // the listener is on a loopback address
	allowed  []string    // Host names accepted besides loopback's (lower case)
	auth     *authSwitch // the current accounts
	throttle *auth.Throttle
	proxies  auth.Proxies // trusted reverse proxies (trusted_proxies)
	insecure bool         // off loopback without admin users: open (insecure_no_auth)
	log      *slog.Logger
}

// statusRealm names the status listener in 401 challenges.
const statusRealm = "wsrc status"

func (g *statusGuard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !g.hostAllowed(r.Host) {
		http.Error(w, fmt.Sprintf("Host %q is not served here: the status listener answers to localhost and loopback addresses (DNS rebinding protection); add the name to status.allowed_hosts (--status-allowed-host) to use it", r.Host),
			http.StatusMisdirectedRequest)
		return
	}
	if g.loopback || r.URL.Path == status.PathHealthz || r.URL.Path == status.PathReadyz {
		// Health checks say nothing secret, and probes (a container's,
		// a load balancer's) bring no credentials.
		g.next.ServeHTTP(w, r)
		return
	}
	acc := g.auth.load()
	if acc.admins == 0 && g.insecure {
		g.next.ServeHTTP(w, r)
		return
	}
	client := auth.ClientKey(g.proxies.ClientAddr(r))
	attempt, wait, ok := g.throttle.Begin(client)
	if !ok {
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
		http.Error(w, "too many failed authentication attempts from this address; try again later", http.StatusTooManyRequests)
		return
	}
	var p *auth.Principal
	err := errors.New("no admin users")
	if acc.admins > 0 {
		p, err = acc.store.UserRequest(r)
	}
	logIt, suppressed := attempt.End(err != nil && !errors.Is(err, auth.ErrNoCredentials))
	switch {
	case err == nil && p != nil && p.Admin:
		g.next.ServeHTTP(w, r)
		return
	case err == nil && p != nil:
		http.Error(w, "the status listener is for admin users only", http.StatusForbidden)
		return
	case err != nil && !errors.Is(err, auth.ErrNoCredentials):
		if logIt {
			g.log.Warn("authentication failed", "port", portStatus, "remote", r.RemoteAddr, "err", err, "failures_not_logged", suppressed)
		}
	}
	for _, v := range auth.Challenge(statusRealm) {
		w.Header().Add("WWW-Authenticate", v)
	}
	http.Error(w, "authentication required: an admin user's name and password, or Authorization: Bearer TOKEN", http.StatusUnauthorized)
}

// hostAllowed reports whether a request's Host header may reach the
// status listener: on loopback, localhost or a loopback address (any
// port) or an allowed name; off loopback anything, unless names are
// configured.
func (g *statusGuard) hostAllowed(hostport string) bool {
	if !g.loopback && len(g.allowed) == 0 {
		return true
	}
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.ToLower(strings.Trim(host, "[]"))
	if host == "" {
		return false
	}
	if slices.Contains(g.allowed, host) {
		return true
	}
	if !g.loopback {
		return false
	}
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

// statusSource shows the relay on the status page.
func statusSource(srv *server.Server, started time.Time) status.Source {
	return status.SourceFunc(func() status.Snapshot {
		cards, users := srv.Snapshot()
		snap := status.Snapshot{Started: started, Cards: make([]status.Card, 0, len(cards)), Users: make([]status.User, 0, len(users))}
		for _, c := range cards {
			sc := status.Card{ID: c.ID, Identities: map[string]string(c.Identities), State: c.State, Agent: c.Agent,
				AgentVersion: c.AgentVersion, Reader: c.Reader, RemoteAddr: c.Remote, ConnectedSince: c.Since, APDUs: c.APDUs}
			if c.User != 0 {
				sc.User = &c.User
			}
			snap.Cards = append(snap.Cards, sc)
		}
		for _, u := range users {
			su := status.User{ID: u.ID, Name: u.Name, RemoteAddr: u.Remote, ConnectedSince: u.Since}
			if u.Card != 0 {
				su.Card = &u.Card
			}
			snap.Users = append(snap.Users, su)
		}
		slices.SortFunc(snap.Users, func(a, b status.User) int { return cmp.Compare(a.ID, b.ID) })
		snap.Conflicts = []status.Conflict{}
		for _, c := range srv.Conflicts() {
			snap.Conflicts = append(snap.Conflicts, status.Conflict{Time: c.Time, Identity: c.Identity, Value: c.Value, Agent: c.Agent,
				Reader: c.Reader, RemoteAddr: c.Remote, ListedAgent: c.Holder, ListedRemoteAddr: c.HolderRemote})
		}
		return snap
	})
}

// metricsObserver counts the relay's events in status.Metrics:
// connections by role, relayed APDUs and their latency, errors by kind,
// failed identifications and agents that came back after losing their
// connection (status.Reconnects, keyed by agent name and reader, or by
// address and ATR for agents that name neither).
type metricsObserver struct {
	m          *status.Metrics
	reconnects status.Reconnects
	now        func() time.Time

	mu   sync.Mutex
	keys map[uint64]string // card connection → its reconnect key, from its first event to its end
}

func newMetricsObserver(m *status.Metrics) *metricsObserver {
	return &metricsObserver{m: m, now: time.Now, keys: make(map[uint64]string)}
}

// Connected counts an accepted connection.
func (o *metricsObserver) Connected(ev server.ConnEvent) { o.m.ConnOpened(status.Role(ev.Port)) }

// Disconnected counts the end of a connection.
func (o *metricsObserver) Disconnected(ev server.ConnEvent, _ string) {
	o.m.ConnClosed(status.Role(ev.Port))
}

// CardChanged notes a card's first event (a returning agent is counted)
// and its end (a lost connection is remembered for Reconnects).
func (o *metricsObserver) CardChanged(ev server.CardEvent) {
	o.mu.Lock()
	key, known := o.keys[ev.ID]
	if ev.State == "" {
		delete(o.keys, ev.ID)
		o.mu.Unlock()
		if known && ev.Lost {
			o.reconnects.Left(key, o.now())
		}
		return
	}
	if known {
		o.mu.Unlock()
		return
	}
	host, _, err := net.SplitHostPort(ev.Remote)
	if err != nil {
		host = ev.Remote
	}
	key = status.ReconnectKey(ev.Agent, ev.Reader, host, ev.Identities[protocol.IdentityATR])
	o.keys[ev.ID] = key
	o.mu.Unlock()
	if o.reconnects.Returned(key, o.now()) {
		o.m.AgentReconnected()
	}
}

// Relayed counts answered c_apdus with their latency, and failed
// requests by kind.
func (o *metricsObserver) Relayed(ev server.RequestEvent) {
	switch ev.Outcome {
	case server.OutcomeOK:
		if ev.Type == protocol.TypeCAPDU {
			o.m.APDURelayed(ev.Duration)
		}
	case server.OutcomeAgentErr:
		o.m.Error(status.ErrorCardAgent)
	case server.OutcomeTimeout:
		o.m.Error(status.ErrorRequestTimeout)
	}
}

// refusalKinds maps refusals to error kinds; those not listed (shutting
// down; connections revoked and cards withdrawn by a reload: the
// operator's doing, logged as such) are not errors. A card its agent's
// changed rules exclude counts as card_not_allowed, as at registration.
var refusalKinds = map[server.RefusalReason]status.ErrorKind{
	server.RefusedNoCredentials: status.ErrorAuth,
	server.RefusedBadCredential: status.ErrorAuth,
	server.RefusedThrottled:     status.ErrorThrottled,
	server.RefusedPortFull:      status.ErrorConnLimit,
	server.RefusedAddrFull:      status.ErrorConnLimit,
	server.RefusedPending:       status.ErrorConnLimit,
	server.RefusedRateLimited:   status.ErrorRateLimit,
	server.RefusedRateClosed:    status.ErrorRateLimit,
	server.RefusedCard:          status.ErrorCardNotAllowed,
	server.RefusedDuplicate:     status.ErrorDuplicateCard,
}

// Refused counts a refusal by kind.
func (o *metricsObserver) Refused(r server.Refusal) {
	if k, ok := refusalKinds[r.Reason]; ok {
		o.m.Error(k)
	}
}

// problemKinds maps the server's problem kinds to error kinds one to one
// (identification failures have a counter of their own).
var problemKinds = map[server.ProblemKind]status.ErrorKind{
	server.ProblemBadMessage: status.ErrorBadMessage,
	server.ProblemUnexpected: status.ErrorUnexpectedMessage,
	server.ProblemHello:      status.ErrorHello,
	server.ProblemSelect:     status.ErrorSelect,
	server.ProblemKeepalive:  status.ErrorKeepalive,
	server.ProblemWrite:      status.ErrorWrite,
	server.ProblemTooBig:     status.ErrorTooBig,
	server.ProblemUpgrade:    status.ErrorUpgrade,
}

// Problem counts a problem by kind.
func (o *metricsObserver) Problem(_ server.ConnEvent, kind server.ProblemKind) {
	if kind == server.ProblemIdentify {
		o.m.IdentifyFailed()
		return
	}
	k, ok := problemKinds[kind]
	if !ok {
		k = status.ErrorOther
	}
	o.m.Error(k)
}
