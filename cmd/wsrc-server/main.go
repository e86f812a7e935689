// Command wsrc-server is the WSRC relay: card agents connect to its card
// port, users (pySim-shell, wsrc, the Go client) to its user port, and it
// relays APDUs between a user and the card it selected. It is a drop-in
// for pySim's contrib/wsrc_server.py: same ports, same flag names, same
// wire protocol (docs/protocol.md).
//
// This package holds flags, the configuration file (config.go), TLS
// (tls.go), systemd integration (systemd.go), signals and the helper
// subcommands (tools.go); the relay is package server, authentication
// package internal/auth.
package main

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
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/crypto/acme/autocert"

	"github.com/wsrc-go/wsrc/internal/auth"
	"github.com/wsrc-go/wsrc/internal/config"
	"github.com/wsrc-go/wsrc/internal/sdnotify"
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

func main() {
	os.Exit(runWithSignals(os.Args[1:], stdio{os.Stdin, os.Stdout, os.Stderr}))
}

// stdio are the program's standard streams.
type stdio struct {
	in       io.Reader
	out, err io.Writer
}

// runWithSignals is run until SIGINT or SIGTERM; SIGHUP reloads.
func runWithSignals(args []string, std stdio) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	return run(ctx, args, std, hup)
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
}

const usage = `Usage: wsrc-server [flags]
       wsrc-server check-config [--config FILE]
       wsrc-server hash-password
       wsrc-server gen-token

wsrc-server is the WSRC (WebSocket Remote Card) relay. Card agents
(wsrc-agent, pySim's wsrc_card_client.py) connect to the card port and are
identified by their EID and ICCID; users (pySim-shell --wsrc-server-url,
wsrc, the Go client library) connect to the user port, list the cards,
select one and exchange APDUs with it. One user per card at a time.

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

Subcommands:
  check-config    validate the configuration, print OK or the errors (exit 1)
  hash-password   read a password, print its bcrypt hash for password_hash
  gen-token       print a new token and its hash for token_hashes

Signals: SIGINT or SIGTERM closes every connection with a reason (WebSocket
close code 1001) and exits with status 0; SIGHUP reloads the TLS
certificate files and the accounts of the configuration file. Exit status 1
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
		"allow a port without accounts to listen on a non-loopback address: anyone who can reach it can use it")
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
	acmeHTTP   []net.Listener // for HTTP-01 challenges; none without ACME
}

func (l *listeners) close() {
	closeAll(l.user)
	closeAll(l.card)
	closeAll(l.acmeHTTP)
}

// openListeners takes the sockets systemd passed (names user, card and
// acme-http), and binds the others itself.
func openListeners(s *settings, logger *slog.Logger) (*listeners, error) {
	socks, err := sdnotify.Listeners()
	if err != nil {
		return nil, err
	}
	l := &listeners{user: socks.User, card: socks.Card}
	if len(l.user) > 0 {
		logger.Info("user port from systemd socket activation; --user-bind-host/--user-bind-port ignored")
	}
	if len(l.card) > 0 {
		logger.Info("card port from systemd socket activation; --card-bind-host/--card-bind-port ignored")
	}
	const acmeSocket = "acme-http"
	if s.tls.acme != nil {
		l.acmeHTTP = socks.Other[acmeSocket]
	}
	for name, lns := range socks.Other {
		if name == acmeSocket && s.tls.acme != nil {
			continue
		}
		logger.Warn("socket from systemd not used", "name", name)
		closeAll(lns)
	}
	fail := func(what string, err error) (*listeners, error) {
		l.close()
		return nil, fmt.Errorf("listening for %s: %w", what, err)
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

// checkOpenPorts refuses a port without accounts that listens beyond
// loopback (the configuration check saw the bind flags; this sees the
// real sockets, e.g. from systemd).
func checkOpenPorts(s *settings, store *auth.Store, l *listeners) error {
	if s.insecureNoAuth {
		return nil
	}
	var errs []error
	for _, p := range []struct {
		name, accounts string
		open           bool
		lns            []net.Listener
	}{
		{"user", "[[user]] accounts", !store.HasUsers(), l.user},
		{"card", "[[agent]] tokens", !store.HasAgents(), l.card},
	} {
		if !p.open {
			continue
		}
		for _, ln := range p.lns {
			if a, ok := ln.Addr().(*net.TCPAddr); !ok || !a.IP.IsLoopback() {
				errs = append(errs, fmt.Errorf("the %s port listens on %v but has no authentication: configure %s, listen on loopback only, or set insecure_no_auth", p.name, ln.Addr(), p.accounts))
			}
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

// authSwitch is the server's Authenticator: the current account store,
// swapped on SIGHUP. A nil store leaves both ports open.
type authSwitch struct{ p atomic.Pointer[auth.Store] }

func (a *authSwitch) UserRequest(r *http.Request) (*auth.Principal, error) {
	return a.p.Load().UserRequest(r)
}

func (a *authSwitch) AgentRequest(r *http.Request) (*auth.Principal, error) {
	return a.p.Load().AgentRequest(r)
}

// serveMain listens and serves until ctx ends.
func serveMain(ctx context.Context, s *settings, o options, explicit map[string]bool, logger *slog.Logger, hup <-chan os.Signal) int {
	lns, err := openListeners(s, logger)
	if err != nil {
		logger.Error("cannot listen", "err", err)
		return exitFailure
	}
	if err := checkOpenPorts(s, s.store, lns); err != nil {
		lns.close()
		logger.Error("refusing to start", "err", err)
		return exitUsage
	}
	a := &app{s: s, o: o, explicit: explicit, log: logger, lns: lns}
	if err := a.setupTLS(); err != nil {
		lns.close()
		logger.Error("TLS", "err", err)
		return exitUsage
	}
	a.auth.p.Store(s.store)
	status := newStatusNotifier()
	cfg := s.srv
	cfg.Auth = &a.auth
	cfg.Observer = status
	a.srv = server.New(cfg, logger)
	if err := a.serve(ctx, status, hup); err != nil {
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
	srv      *server.Server
	auth     authSwitch
	certs    *certReloader     // nil unless TLS from files
	tlsCfg   *tls.Config       // nil without TLS
	acme     *autocert.Manager // nil without ACME
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

// serve runs the HTTP servers on the listeners (which it owns) until ctx
// ends, then shuts down: no new connections, every open one closed with
// 1001 and a reason.
func (a *app) serve(ctx context.Context, status *statusNotifier, hup <-chan os.Signal) error {
	logger := a.log
	httpLog := log.New(&slogWriter{logger}, "", 0)
	newHTTP := func(h http.Handler) *http.Server {
		return &http.Server{
			Handler:           h,
			ReadHeaderTimeout: a.s.headerTimeout, // also bounds the TLS handshake
			MaxHeaderBytes:    16 << 10,
			ErrorLog:          httpLog,
			TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){}, // no HTTP/2
		}
	}
	users, cards := newHTTP(a.srv.UserHandler()), newHTTP(a.srv.CardHandler())
	servers := []*http.Server{users, cards}
	type group struct {
		hs   *http.Server
		lns  []net.Listener
		name string
		tls  bool
	}
	groups := []group{{users, a.lns.user, "user", a.tlsCfg != nil}, {cards, a.lns.card, "card", a.tlsCfg != nil}}
	if len(a.lns.acmeHTTP) > 0 {
		h := newHTTP(acmeHTTPHandler(a.acme))
		servers = append(servers, h)
		groups = append(groups, group{h, a.lns.acmeHTTP, "acme-http", false})
	}
	var wg sync.WaitGroup
	errc := make(chan error, len(a.lns.user)+len(a.lns.card)+len(a.lns.acmeHTTP))
	scheme := "ws"
	if a.tlsCfg != nil {
		scheme = "wss"
	}
	for _, g := range groups {
		for _, ln := range g.lns {
			if g.tls {
				ln = tls.NewListener(ln, a.tlsCfg)
			}
			logger.Info("listening", "port", g.name, "addr", ln.Addr().String(), "scheme", scheme)
			if !g.tls && g.name != "acme-http" && !isLoopback(ln.Addr()) {
				logger.Warn("no TLS on a port reachable from the network: passwords, tokens and APDUs cross it in clear text", "port", g.name)
			}
			wg.Go(func() { errc <- g.hs.Serve(ln) })
		}
	}
	logger.Info("wsrc-server started", "version", version.Version, "config", a.s.configPath,
		"user_auth", a.s.store.HasUsers(), "card_auth", a.s.store.HasAgents())

	bg, stopBG := context.WithCancel(context.Background())
	var bgWG sync.WaitGroup
	bgWG.Go(func() {
		if err := sdnotify.Watchdog(bg); err != nil {
			logger.Warn("systemd watchdog", "err", err)
		}
	})
	bgWG.Go(func() { status.run(bg, a.srv.Stats, statusEvery, sdnotify.Status) })
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
	_ = sdnotify.Stopping()
	_ = sdnotify.Status("shutting down: closing connections")
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	// Listeners first (no new upgrades), then the WebSockets.
	for _, hs := range servers {
		_ = hs.Shutdown(sctx)
	}
	if serr := a.srv.Shutdown(sctx); serr != nil && err == nil {
		err = serr
	}
	stopBG()
	bgWG.Wait()
	wg.Wait()
	return err
}

// reload re-reads the TLS certificate files and the configuration file's
// accounts (SIGHUP). Anything invalid keeps the running state and is
// logged; connections already open keep their rights.
func (a *app) reload() {
	a.log.Info("SIGHUP: reloading")
	s := a.s
	if a.s.configPath != "" {
		ns, err := loadSettings(a.o, a.explicit)
		switch {
		case err != nil:
			a.log.Error("configuration not reloaded: keeping the running one", "err", err)
		case checkOpenPorts(ns, ns.store, a.lns) != nil:
			a.log.Error("configuration not reloaded: keeping the running one", "err", checkOpenPorts(ns, ns.store, a.lns))
		default:
			s = ns
			a.auth.p.Store(ns.store)
			a.log.Info("accounts reloaded (they apply to new connections; other settings need a restart)",
				"users", ns.store.UserCount(), "agents", ns.store.AgentCount())
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
