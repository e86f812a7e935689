// Package daemon is the wsrc-server daemon around the relay (package
// server): flags and the configuration file (config.go), listeners and
// socket activation, TLS (tls.go), accounts and reloads, the status
// listener and metrics (status.go), APDU traces (trace.go), systemd
// integration (systemd.go) and the helper subcommands (tools.go).
// cmd/wsrc-server only hands it the program's arguments, standard
// streams and signals.
package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/acme/autocert"

	"github.com/wsrc-go/wsrc/internal/auth"
	"github.com/wsrc-go/wsrc/internal/config"
	"github.com/wsrc-go/wsrc/internal/sdnotify"
	"github.com/wsrc-go/wsrc/internal/status"
	"github.com/wsrc-go/wsrc/internal/trace"
	"github.com/wsrc-go/wsrc/internal/version"
	"github.com/wsrc-go/wsrc/protocol"
	"github.com/wsrc-go/wsrc/server"
)

// shutdownTimeout bounds the orderly close of every connection on
// SIGINT/SIGTERM.
const shutdownTimeout = 10 * time.Second

// envPrefix starts the environment variables that stand in for flags.
const envPrefix = "WSRC_SERVER_"

// Exit statuses.
const (
	exitOK      = 0
	exitFailure = 1 // could not run (a port taken, a listener failed)
	exitUsage   = 2 // bad flags or configuration: restarting will not help
)

// Main runs wsrc-server with the command line args (without the program
// name) and the standard streams: a helper subcommand, or the server
// until ctx ends (SIGINT, SIGTERM), reloading at every value on hup
// (SIGHUP). It returns the exit status.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, hup <-chan os.Signal) int {
	return run(ctx, args, stdio{stdin, stdout, stderr}, hup)
}

// stdio are the program's standard streams.
type stdio struct {
	in       io.Reader
	out, err io.Writer
}

// options are the command-line settings.
type options struct {
	configPath         string
	userHost, cardHost string
	userPort, cardPort int
	requestTimeout     time.Duration
	showRemoteAddr     bool
	logLevel           string
	tlsCert, tlsKey    string
	insecureNoAuth     bool
	statusBind         string
	statusHosts        []string
	tracePcap          string
	traceDir           string
	traceLog           bool
	traceNoRedact      bool
	traceCards         []string
	traceMaxSize       int64
	traceKeep          int
}

const usage = `Usage: wsrc-server [flags]
       wsrc-server check-config [--config FILE]
       wsrc-server hash-password
       wsrc-server gen-token
       wsrc-server healthcheck [--config FILE] [--status-bind HOST:PORT]

wsrc-server is the WSRC (WebSocket Remote Card) relay. Card agents
(wsrc-agent, pySim's wsrc_card_client.py) connect to the card port and are
identified (EID and ICCID as pySim does, then the IMSI where no PIN guards
it); users (pySim-shell --wsrc-server-url, wsrc, the Go client library)
connect to the user port, list the cards, select one and exchange APDUs
with it. One user per card at a time.

It is a drop-in for pySim's contrib/wsrc_server.py: the same ports (user
4220, card 4221) and flag names. Both ports listen on loopback by default;
"localhost" binds both 127.0.0.1 and ::1.

Configuration: /etc/wsrc/server.toml (--config; see docs/examples/server.toml
and docs/security.md): TLS certificates or ACME, user accounts with the
cards each may use, agent tokens, limits. Every flag can also be set as an
environment variable WSRC_SERVER_<FLAG> (--user-bind-host:
WSRC_SERVER_USER_BIND_HOST); flags override the environment, which
overrides the file. A port without accounts ([[user]] for the user port,
[[agent]] for the card port) has no authentication and may only listen on
loopback, unless --insecure-no-auth.

Status: a live page, /api/v1/status (JSON), /metrics (Prometheus), /healthz
and /readyz on --status-bind (default 127.0.0.1:4223). On loopback it only
answers requests that name localhost or a loopback address (or a name of
--status-allowed-host); on any other address it wants an admin user's
credentials (health checks excepted).

Tracing: --trace-pcap, --trace-dir and --trace-log write the relayed APDUs
(pcap files for Wireshark, or log lines), PINs, keys and authentication
data replaced by ff bytes unless --trace-no-redact.

Subcommands:
  check-config    validate the configuration, print OK or the errors (exit 1)
  hash-password   read a password, print its bcrypt hash for password_hash
  gen-token       print a new token and its hash for token_hashes
  healthcheck     ask the status listener's /healthz (exit 0 when healthy,
                  1 otherwise): a container's health check

Signals: SIGINT or SIGTERM closes every connection with a reason (WebSocket
close code 1001) and exits with status 0; SIGHUP reloads the TLS
certificate files and the accounts of the configuration file, and applies
the accounts to open connections too: one whose password, token or
account is gone is closed (close code 1008), one whose card its new rules
exclude loses the card. An invalid file changes nothing. Exit status 1
means the server could not run (e.g. a port is taken), 2 a usage or
configuration error. Under systemd it notifies readiness and status, feeds
the watchdog and takes its ports by socket activation (names user, card).

Flags:
`

func newFlagSet(o *options, out io.Writer) (*flag.FlagSet, *bool) {
	fs := flag.NewFlagSet("wsrc-server", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprint(out, usage)
		printDefaults(fs, out)
	}
	fs.StringVar(&o.configPath, "config", DefaultConfigPath, "configuration file (a missing default file is fine)")
	fs.StringVar(&o.userHost, "user-bind-host", "127.0.0.1", "local host name or IP address to listen on for users")
	fs.IntVar(&o.userPort, "user-bind-port", protocol.DefaultUserPort, "TCP port to listen on for users")
	fs.StringVar(&o.cardHost, "card-bind-host", "127.0.0.1", "local host name or IP address to listen on for card agents")
	fs.IntVar(&o.cardPort, "card-bind-port", protocol.DefaultCardPort, "TCP port to listen on for card agents")
	fs.DurationVar(&o.requestTimeout, "request-timeout", server.DefaultRequestTimeout,
		"how long a card agent may take to answer one relayed APDU or reset before it is disconnected")
	fs.BoolVar(&o.showRemoteAddr, "show-remote-addr", false,
		"show anonymous users (of a user port without accounts) each card agent's IP address and port in list_cards, as pySim does; admins always see them")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&o.tlsCert, "tls-cert", "", "TLS certificate chain file (PEM) for both ports; reloaded on SIGHUP")
	fs.StringVar(&o.tlsKey, "tls-key", "", "TLS private key file (PEM) for --tls-cert")
	fs.BoolVar(&o.insecureNoAuth, "insecure-no-auth", false,
		"allow a port without accounts to listen on a non-loopback address (and the status listener without an admin user): anyone who can reach it can use it")
	fs.StringVar(&o.statusBind, "status-bind", defaultStatusBind,
		"`host:port` of the status listener: live page, /api/v1/status, /metrics, /healthz, /readyz (operators only: it shows card identities and addresses; off loopback it needs an admin user's credentials); empty disables it")
	fs.Var(listFlag{&o.statusHosts}, "status-allowed-host",
		"a `name` the status listener accepts in the Host header besides localhost and loopback addresses (DNS rebinding protection); repeatable, or comma-separated")
	fs.StringVar(&o.tracePcap, "trace-pcap", "", "write every relayed APDU to this pcap `file` (GSMTAP SIM, for Wireshark); PINs and keys redacted")
	fs.StringVar(&o.traceDir, "trace-dir", "", "write one pcap file per card into this `directory` (named by EID, ICCID or card ID)")
	fs.BoolVar(&o.traceLog, "trace-log", false, "log one line per relayed APDU (redacted like the pcap files)")
	fs.BoolVar(&o.traceNoRedact, "trace-no-redact", false, "trace PINs, keys and authentication data as relayed: only with test cards")
	fs.Var(listFlag{&o.traceCards}, "trace-card",
		"trace only this card: a card `ID` (as on the status page), ICCID or EID; repeatable, or comma-separated (default: every card)")
	fs.Var(sizeFlag{&o.traceMaxSize}, "trace-max-size", "start a new pcap file when one would grow past this `size` (e.g. 100M; default: never)")
	fs.IntVar(&o.traceKeep, "trace-keep", trace.DefaultMaxFiles, "how many rotated pcap files to keep per file")
	showVersion := fs.Bool("version", false, "print the version and exit")
	return fs, showVersion
}

// parseFlags parses args and the environment (lookup). It returns the
// options and the flags set explicitly.
func parseFlags(args []string, out io.Writer, lookup func(string) (string, bool)) (options, map[string]bool, error) {
	var o options
	fs, showVersion := newFlagSet(&o, out)
	if err := fs.Parse(args); err != nil {
		return o, nil, err
	}
	if *showVersion {
		fmt.Fprintln(out, "wsrc-server", version.Version)
		return o, nil, flag.ErrHelp
	}
	if fs.NArg() > 0 {
		return o, nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if err := config.FlagsFromEnv(fs, envPrefix, lookup); err != nil {
		return o, nil, err
	}
	explicit := config.Explicit(fs)
	if o.requestTimeout <= 0 {
		return o, nil, fmt.Errorf("--request-timeout must be positive")
	}
	return o, explicit, nil
}

// printDefaults is flag.PrintDefaults with pySim's double dashes (Go
// accepts both spellings).
func printDefaults(fs *flag.FlagSet, out io.Writer) {
	fs.VisitAll(func(f *flag.Flag) {
		typ, help := flag.UnquoteUsage(f)
		line := "  --" + f.Name
		if typ != "" {
			line += " " + typ
		}
		fmt.Fprintf(out, "%s\n    \t%s", line, help)
		if f.DefValue != "" && f.DefValue != "false" {
			fmt.Fprintf(out, " (default %s)", f.DefValue)
		}
		fmt.Fprintln(out)
	})
}

// lookupEnv is os.LookupEnv; a variable for tests.
var lookupEnv = os.LookupEnv

// run runs a subcommand, or the server until ctx ends. It returns the exit
// status.
func run(ctx context.Context, args []string, std stdio, hup <-chan os.Signal) int {
	if len(args) > 0 {
		switch args[0] {
		case "check-config":
			return checkConfig(args[1:], std)
		case "hash-password":
			return hashPassword(args[1:], std)
		case "gen-token":
			return genToken(args[1:], std)
		case "healthcheck":
			return healthcheck(args[1:], std)
		}
	}
	o, explicit, err := parseFlags(args, std.err, lookupEnv)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintln(std.err, "wsrc-server:", err)
		return exitUsage
	}
	s, err := loadSettings(o, explicit)
	if err != nil {
		fmt.Fprintln(std.err, "wsrc-server: invalid configuration:")
		fmt.Fprintln(std.err, indent(err.Error()))
		return exitUsage
	}
	logger := slog.New(slog.NewTextHandler(std.err, &slog.HandlerOptions{Level: s.logLevel}))
	return serveMain(ctx, s, o, explicit, logger, hup)
}

// loadSettings reads the configuration file named in o (the default one
// may be missing) and merges it with the flags.
func loadSettings(o options, explicit map[string]bool) (*settings, error) {
	var fc fileConfig
	var f *config.File
	if o.configPath != "" {
		var err error
		f, err = config.Load(o.configPath, &fc)
		switch {
		case errors.Is(err, os.ErrNotExist) && !explicit["config"]:
			f = nil
		case err != nil:
			return nil, err
		}
	}
	s, err := resolve(o, f, &fc, explicit)
	if err != nil {
		return nil, err
	}
	return s, nil
}

func indent(s string) string {
	return "  " + strings.ReplaceAll(s, "\n", "\n  ")
}

// listeners are the sockets the server serves on.
type listeners struct {
	user, card []net.Listener
	status     []net.Listener // none when the status listener is off
	acmeHTTP   []net.Listener // for HTTP-01 challenges; none without ACME
	// activated names the ports whose sockets came from systemd.
	activated map[string]bool
}

func (l *listeners) close() {
	closeAll(l.user)
	closeAll(l.card)
	closeAll(l.status)
	closeAll(l.acmeHTTP)
}

// Port names, as logs and systemd's socket names (FileDescriptorName=)
// give them.
const (
	portUser     = "user"
	portCard     = "card"
	portStatus   = "status"
	portACMEHTTP = "acme-http"
)

// openListeners takes the sockets systemd passed (names user, card,
// status and acme-http), and binds the others itself.
func openListeners(s *settings, logger *slog.Logger) (*listeners, error) {
	socks, err := sdnotify.Listeners()
	if err != nil {
		return nil, err
	}
	l := &listeners{user: socks.User, card: socks.Card, status: socks.Other[portStatus], activated: map[string]bool{}}
	if len(l.user) > 0 {
		l.activated[portUser] = true
		logger.Info("user port from systemd socket activation; --user-bind-host/--user-bind-port ignored")
	}
	if len(l.card) > 0 {
		l.activated[portCard] = true
		logger.Info("card port from systemd socket activation; --card-bind-host/--card-bind-port ignored")
	}
	if len(l.status) > 0 {
		l.activated[portStatus] = true
		logger.Info("status listener from systemd socket activation; --status-bind ignored")
	}
	if s.tls.acme != nil {
		l.acmeHTTP = socks.Other[portACMEHTTP]
	}
	for name, lns := range socks.Other {
		if name == portStatus || name == portACMEHTTP && s.tls.acme != nil {
			continue
		}
		logger.Warn("socket from systemd not used", "name", name)
		closeAll(lns)
	}
	fail := func(what string, err error) (*listeners, error) {
		l.close()
		return nil, fmt.Errorf("listening for %s: %w", what, err)
	}
	if len(l.status) == 0 && s.status.bind != "" {
		host, port, _ := net.SplitHostPort(s.status.bind) // checked by statusConfig
		n, _ := strconv.Atoi(port)
		if l.status, err = listen(host, n); err != nil {
			return fail("the status listener", err)
		}
	}
	if len(l.user) == 0 {
		if l.user, err = listen(s.userHost, s.userPort); err != nil {
			return fail("users", err)
		}
	}
	if len(l.card) == 0 {
		if l.card, err = listen(s.cardHost, s.cardPort); err != nil {
			return fail("card agents", err)
		}
	}
	if s.tls.acme != nil && len(l.acmeHTTP) == 0 && s.tls.acme.httpListen != "" {
		ln, err := net.Listen("tcp", s.tls.acme.httpListen)
		if err != nil {
			return fail("ACME HTTP-01 challenges on "+s.tls.acme.httpListen+" (binding a port below 1024 needs CAP_NET_BIND_SERVICE or a socket unit named acme-http)", err)
		}
		l.acmeHTTP = []net.Listener{ln}
	}
	return l, nil
}

// openPorts finds the ports without accounts that listen beyond loopback
// (the configuration check saw the bind flags; this sees the real
// sockets, e.g. from systemd): port name → why it must not serve.
func openPorts(s *settings, l *listeners) map[string]error {
	probs := map[string]error{}
	if s.insecureNoAuth {
		return probs
	}
	for _, p := range []struct {
		name, what, accounts string
		open                 bool
		lns                  []net.Listener
	}{
		{portUser, "the user port", "[[user]] accounts", !s.store.HasUsers(), l.user},
		{portCard, "the card port", "[[agent]] tokens", !s.store.HasAgents(), l.card},
		{portStatus, "the status listener", "an admin user ([[user]] with admin = true)", s.admins == 0, l.status},
	} {
		if !p.open {
			continue
		}
		for _, ln := range p.lns {
			if !isLoopback(ln.Addr()) {
				probs[p.name] = fmt.Errorf("%s listens on %v but has no authentication: configure %s, listen on loopback only, or set insecure_no_auth", p.what, ln.Addr(), p.accounts)
				break
			}
		}
	}
	return probs
}

// joinProblems lists the problems of openPorts in port order.
func joinProblems(probs map[string]error) error {
	var errs []error
	for _, name := range []string{portUser, portCard, portStatus} {
		if err := probs[name]; err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// listen opens the listeners for host:port. "localhost" means both
// loopback addresses, as pySim (asyncio) binds them; ::1 is skipped where
// IPv6 is unavailable.
func listen(host string, port int) ([]net.Listener, error) {
	hosts := []string{host}
	if strings.EqualFold(host, "localhost") {
		hosts = []string{"127.0.0.1", "::1"}
	}
	var lns []net.Listener
	for i, h := range hosts {
		ln, err := net.Listen("tcp", net.JoinHostPort(h, strconv.Itoa(port)))
		if err != nil {
			if i > 0 && len(lns) > 0 {
				continue // localhost without IPv6
			}
			closeAll(lns)
			return nil, err
		}
		lns = append(lns, ln)
		if port == 0 {
			// Both loopback listeners on one (free) port number.
			port = ln.Addr().(*net.TCPAddr).Port
		}
	}
	return lns, nil
}

func closeAll(lns []net.Listener) {
	for _, ln := range lns {
		ln.Close()
	}
}

// authSwitch is the server's Authenticator: the current accounts,
// swapped on SIGHUP. A nil store leaves both ports open.
type authSwitch struct{ p atomic.Pointer[accounts] }

// accounts are the users and agents of one configuration.
type accounts struct {
	store  *auth.Store // nil: none
	admins int         // users with admin = true
}

func (a *authSwitch) store(s *settings) { a.p.Store(&accounts{s.store, s.admins}) }

func (a *authSwitch) load() *accounts { return a.p.Load() }

func (a *authSwitch) UserRequest(r *http.Request) (*auth.Principal, error) {
	return a.load().store.UserRequest(r)
}

func (a *authSwitch) AgentRequest(r *http.Request) (*auth.Principal, error) {
	return a.load().store.AgentRequest(r)
}

// RecheckUser judges an open user connection by the current accounts
// (server.Rechecker).
func (a *authSwitch) RecheckUser(p *auth.Principal) (*auth.Principal, error) {
	return a.load().store.RecheckUser(p)
}

// RecheckAgent judges an open card agent connection by the current
// accounts.
func (a *authSwitch) RecheckAgent(p *auth.Principal) (*auth.Principal, error) {
	return a.load().store.RecheckAgent(p)
}

// portGate stands in front of a port's handler: while the port must not
// serve (a socket from systemd on every address, and no accounts yet) it
// answers 503 and says why in the log, not to the client. A reload that
// brings the accounts opens it.
type portGate struct {
	next http.Handler
	why  atomic.Pointer[error] // nil: serving
}

func (g *portGate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if g.why.Load() != nil {
		w.Header().Set("Retry-After", "60")
		http.Error(w, "this WSRC server is not set up to serve this port yet: its operator has to configure accounts (see the server's log)", http.StatusServiceUnavailable)
		return
	}
	g.next.ServeHTTP(w, r)
}

// set closes the gate with err, or opens it (nil); it reports whether
// that changed anything.
func (g *portGate) set(err error) bool {
	if err == nil {
		return g.why.Swap(nil) != nil
	}
	return g.why.Swap(&err) == nil
}

// serveMain listens and serves until ctx ends.
func serveMain(ctx context.Context, s *settings, o options, explicit map[string]bool, logger *slog.Logger, hup <-chan os.Signal) int {
	lns, err := openListeners(s, logger)
	if err != nil {
		logger.Error("cannot listen", "err", err)
		return exitFailure
	}
	probs := openPorts(s, lns)
	for name := range probs {
		// A socket systemd passed is served (closed, with 503s) until a
		// reload brings accounts: exiting would only make systemd start
		// the server again at the next connection, and again.
		if !lns.activated[name] {
			lns.close()
			logger.Error("refusing to start", "err", joinProblems(probs))
			return exitUsage
		}
	}
	a := &app{s: s, o: o, explicit: explicit, log: logger, lns: lns, started: time.Now(),
		gates: map[string]*portGate{portUser: {}, portCard: {}, portStatus: {}}}
	if err := a.setupTLS(); err != nil {
		lns.close()
		logger.Error("TLS", "err", err)
		return exitUsage
	}
	a.auth.store(s)
	tr, err := newTracer(s.trace, logger)
	if err != nil {
		lns.close()
		logger.Error("cannot start", "err", err)
		return exitUsage
	}
	a.metrics = status.NewMetrics()
	if tr != nil {
		a.metrics.Registry().MustRegister(traceCollector(tr)...)
	}
	sd := newStatusNotifier()
	cfg := s.srv
	cfg.Auth = &a.auth
	obs := []server.Observer{sd, newMetricsObserver(a.metrics)}
	if tr != nil {
		at := &apduTracer{tr: tr}
		cfg.Tracer = at
		obs = append(obs, at)
	}
	cfg.Observer = server.Observers(obs...)
	a.srv = server.New(cfg, logger)
	a.tracer, a.sd = tr, sd
	a.setGates(probs)
	if err := a.serve(ctx, hup); err != nil {
		logger.Error("shutdown", "err", err)
		return exitFailure
	}
	return exitOK
}

// app is the running server with what SIGHUP reloads.
type app struct {
	s        *settings
	o        options
	explicit map[string]bool
	log      *slog.Logger
	lns      *listeners
	started  time.Time
	draining atomic.Bool // the shutdown has begun
	srv      *server.Server
	auth     authSwitch
	gates    map[string]*portGate // by port name; closed while the port must not serve
	metrics  *status.Metrics
	tracer   *trace.Tracer     // nil without tracing
	sd       *statusNotifier   // systemd's status line
	certs    *certReloader     // nil unless TLS from files
	tlsCfg   *tls.Config       // nil without TLS
	acme     *autocert.Manager // nil without ACME
}

// setGates closes the gates of the ports in probs (see openPorts) and
// opens the others, logging each change, and updates systemd's status
// line.
func (a *app) setGates(probs map[string]error) {
	var closed []string
	for _, name := range []string{portUser, portCard, portStatus} {
		err := probs[name]
		if err != nil {
			closed = append(closed, name)
		}
		switch changed := a.gates[name].set(err); {
		case changed && err != nil:
			a.log.Error("NOT SERVING this port (connections get HTTP 503): add the accounts to the configuration file, then reload (systemctl reload wsrc-server)",
				"port", name, "err", err, "config", a.s.configPath)
		case changed:
			a.log.Info("serving the port now that it has accounts", "port", name)
		}
	}
	note := ""
	if len(closed) > 0 {
		note = "NOT SERVING the " + strings.Join(closed, " and ") + " port(s): no accounts, see the log"
	}
	a.sd.setNote(note)
}

// ready is /readyz: the relay takes connections on every port.
func (a *app) ready() error {
	if a.draining.Load() {
		return errors.New("shutting down")
	}
	if err := a.srv.Ready(); err != nil {
		return err
	}
	for _, name := range []string{portUser, portCard} {
		if why := a.gates[name].why.Load(); why != nil {
			return fmt.Errorf("not serving the %s port: %w", name, *why)
		}
	}
	return nil
}

// setupTLS prepares the TLS configuration of both ports, if any.
func (a *app) setupTLS() error {
	t := a.s.tls
	switch {
	case t.certFile != "":
		r, err := newCertReloader(t.certFile, t.keyFile, a.log)
		if err != nil {
			return err
		}
		a.certs = r
		a.tlsCfg = baseTLSConfig(t.minVersion, r.GetCertificate)
	case t.acme != nil:
		a.acme = newACMEManager(t.acme)
		a.tlsCfg = acmeTLSConfig(a.acme, t.minVersion)
		a.log.Info("TLS certificates from ACME; the first connection for a host name without a cached certificate asks the CA",
			"host_names", t.acme.hostNames, "cache_dir", t.acme.cacheDir, "directory", a.acme.Client)
		if len(a.lns.acmeHTTP) == 0 {
			a.log.Warn("no HTTP-01 listener (tls.acme.http_listen is empty): the CA can only use TLS-ALPN-01, which it tries on port 443")
		}
	}
	return nil
}

// Timeouts of the status listener's plain, short requests.
const (
	statusWriteTimeout = 30 * time.Second
	statusIdleTimeout  = 60 * time.Second
)

// NewHTTPServer returns the HTTP server wsrc-server runs a port's
// handler h with. Every state of a connection before it is a WebSocket
// is bounded by headerTimeout: the TLS handshake and the request's header
// (ReadHeaderTimeout), a body dribbled slowly (ReadTimeout), a client
// that does not read the answer (WriteTimeout) and a connection kept
// alive after an answer that was not an upgrade (IdleTimeout). The
// upgrade (a hijack) clears these deadlines; the relay sets its own.
// HTTP/2 is off (WebSockets need HTTP/1.1).
func NewHTTPServer(h http.Handler, headerTimeout time.Duration, errorLog *log.Logger) *http.Server {
	t := headerTimeout
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: t,
		ReadTimeout:       t,
		WriteTimeout:      t,
		IdleTimeout:       t,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          errorLog,
		TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){}, // no HTTP/2
	}
}

// serve runs the HTTP servers on the listeners (which it owns) until ctx
// ends, then shuts down: no new connections, every open one closed with
// 1001 and a reason, the tracer flushed, and the status listener last,
// so that /readyz says so and /metrics can be scraped while the relay
// drains.
func (a *app) serve(ctx context.Context, hup <-chan os.Signal) error {
	logger := a.log
	httpLog := log.New(&slogWriter{logger}, "", 0)
	newHTTP := func(h http.Handler) *http.Server { return NewHTTPServer(h, a.s.headerTimeout, httpLog) }
	a.gates[portUser].next, a.gates[portCard].next = a.srv.UserHandler(), a.srv.CardHandler()
	users, cards := newHTTP(a.gates[portUser]), newHTTP(a.gates[portCard])
	// And their number, per port and per client.
	users.ConnState, cards.ConnState = a.srv.ConnState(server.PortUser), a.srv.ConnState(server.PortCard)
	servers := []*http.Server{users, cards}
	type group struct {
		hs   *http.Server
		ln   net.Listener
		name string
		tls  bool
	}
	var groups []group
	for _, ln := range a.lns.user {
		groups = append(groups, group{users, ln, portUser, a.tlsCfg != nil})
	}
	for _, ln := range a.lns.card {
		groups = append(groups, group{cards, ln, portCard, a.tlsCfg != nil})
	}
	if len(a.lns.acmeHTTP) > 0 {
		h := newHTTP(acmeHTTPHandler(a.acme))
		servers = append(servers, h)
		for _, ln := range a.lns.acmeHTTP {
			groups = append(groups, group{h, ln, portACMEHTTP, false})
		}
	}
	// One HTTP server per status listener: each knows whether it is on
	// loopback (Host check) or not (credentials, and TLS when the relay
	// has it).
	statusHandler := status.NewHandler(status.Options{Source: statusSource(a.srv, a.started), Metrics: a.metrics,
		Ready: a.ready, Logger: logger})
	statusThrottle := auth.NewThrottle(a.s.srv.AuthFailureBurst, a.s.srv.AuthFailurePer)
	a.gates[portStatus].next = statusHandler
	var statusServers []*http.Server
	for _, ln := range a.lns.status {
		loop := isLoopback(ln.Addr())
		g := &statusGuard{next: a.gates[portStatus], loopback: loop, allowed: a.s.status.allowedHosts, auth: &a.auth,
			throttle: statusThrottle, proxies: a.s.srv.TrustedProxies, insecure: a.s.insecureNoAuth, log: logger}
		hs := newHTTP(g)
		hs.WriteTimeout, hs.IdleTimeout = statusWriteTimeout, statusIdleTimeout
		statusServers = append(statusServers, hs)
		groups = append(groups, group{hs, ln, portStatus, !loop && a.tlsCfg != nil})
	}
	var wg sync.WaitGroup
	errc := make(chan error, len(groups))
	for _, g := range groups {
		ln, scheme := g.ln, "ws"
		if g.name == portStatus || g.name == portACMEHTTP {
			scheme = "http"
		}
		if g.tls {
			ln = tls.NewListener(ln, a.tlsCfg)
			scheme += "s"
		}
		logger.Info("listening", "port", g.name, "addr", ln.Addr().String(), "scheme", scheme)
		if !g.tls && g.name != portACMEHTTP && !isLoopback(ln.Addr()) {
			what := "passwords, tokens and APDUs cross it in clear text"
			if g.name == portStatus {
				what = "credentials and card identities cross it in clear text"
			}
			logger.Warn("no TLS on a port reachable from the network: "+what, "port", g.name)
		}
		wg.Go(func() { errc <- g.hs.Serve(ln) })
	}
	logger.Info("wsrc-server started", "version", version.Version, "config", a.s.configPath,
		"user_auth", a.s.store.HasUsers(), "card_auth", a.s.store.HasAgents())

	bg, stopBG := context.WithCancel(context.Background())
	var bgWG sync.WaitGroup
	bgWG.Go(func() {
		// Pinged only while the relay's registries answer: a relay
		// wedged on its own locks is restarted.
		if err := sdnotify.WatchdogWhile(bg, func() error { a.srv.Stats(); return nil }); err != nil {
			logger.Warn("systemd watchdog", "err", err)
		}
	})
	bgWG.Go(func() { a.sd.run(bg, a.srv.Stats, statusEvery, sdnotify.Status) })
	if err := sdnotify.Ready(); err != nil {
		logger.Warn("systemd readiness", "err", err)
	}

	var err error
loop:
	for {
		select {
		case <-ctx.Done():
			logger.Info("shutting down")
			break loop
		case err = <-errc: // a listener failed
			logger.Error("listener failed", "err", err)
			break loop
		case <-hup:
			a.reload()
		}
	}
	a.draining.Store(true) // /readyz says so from now on
	_ = sdnotify.Stopping()
	_ = sdnotify.Status("shutting down: closing connections")
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	// Listeners first (no new upgrades), then the WebSockets, then the
	// tracer (the last exchanges are written), the status listener last.
	for _, hs := range servers {
		_ = hs.Shutdown(sctx)
	}
	if serr := a.srv.Shutdown(sctx); serr != nil && err == nil {
		err = serr
	}
	logger.Info("connections closed")
	if terr := a.tracer.Close(); terr != nil {
		logger.Warn("closing the APDU trace", "err", terr)
	}
	for _, hs := range statusServers {
		_ = hs.Shutdown(sctx)
	}
	logger.Info("status listener closed")
	stopBG()
	bgWG.Wait()
	wg.Wait()
	return err
}

// reload re-reads the TLS certificate files and the configuration file's
// accounts (SIGHUP). Anything invalid keeps the running state and is
// logged. New accounts apply to the connections already open too
// (server.Recheck): those whose credentials are no longer accepted are
// closed, the others take their new rights. A port that is served is
// never opened to anyone by a reload; one that is not served (see
// portGate) starts serving once the accounts are there.
func (a *app) reload() {
	a.log.Info("SIGHUP: reloading")
	s := a.s
	if a.s.configPath != "" {
		ns, err := loadSettings(a.o, a.explicit)
		var probs map[string]error
		if err == nil {
			probs = openPorts(ns, a.lns)
			for name, perr := range probs {
				if a.gates[name].why.Load() == nil {
					err = errors.Join(err, perr) // served now: it must stay closed to strangers
				}
			}
		}
		switch {
		case err != nil:
			a.log.Error("configuration not reloaded: keeping the running one", "err", err)
		default:
			s = ns
			a.auth.store(ns)
			a.setGates(probs)
			res, err := a.srv.Recheck()
			if err != nil { // cannot happen: authSwitch is a Rechecker
				a.log.Error("open connections not rechecked", "err", err)
			}
			a.log.Info("accounts reloaded and applied to open connections (other settings need a restart)",
				"users", ns.store.UserCount(), "agents", ns.store.AgentCount(), "connections_checked", res.Checked,
				"revoked", res.Revoked, "cards_withdrawn", res.Withdrawn, "cards_refused", res.Refused)
		}
	}
	if a.certs != nil {
		if s.tls.certFile != "" {
			a.certs.SetFiles(s.tls.certFile, s.tls.keyFile)
		}
		if err := a.certs.Reload(); err != nil {
			a.log.Error("TLS certificate not reloaded: keeping the old one", "err", err)
		}
	}
}

// isLoopback reports whether a listener address is on loopback.
func isLoopback(a net.Addr) bool {
	t, ok := a.(*net.TCPAddr)
	return ok && t.IP.IsLoopback()
}

// slogWriter sends net/http's log lines to slog. TLS handshake errors
// (scanners, clients that do not trust the certificate) are debug
// noise; the rest is a warning.
type slogWriter struct{ l *slog.Logger }

func (w *slogWriter) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(p))
	if strings.Contains(msg, "TLS handshake error") {
		w.l.Debug(msg, "source", "net/http")
	} else {
		w.l.Warn(msg, "source", "net/http")
	}
	return len(p), nil
}
