// Command wsrc-server is the WSRC relay: card agents connect to its card
// port, users (pySim-shell, wsrc, the Go client) to its user port, and it
// relays APDUs between a user and the card it selected. It is a drop-in
// for pySim's contrib/wsrc_server.py: same ports, same flag names, same
// wire protocol (docs/protocol.md).
//
// This file holds flags, listeners and signals only; the relay is package
// server.
package main

import (
	"context"
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
	"syscall"
	"time"

	"github.com/wsrc-go/wsrc/internal/version"
	"github.com/wsrc-go/wsrc/protocol"
	"github.com/wsrc-go/wsrc/server"
)

// shutdownTimeout bounds the orderly close of every connection on
// SIGINT/SIGTERM.
const shutdownTimeout = 10 * time.Second

func main() {
	os.Exit(runWithSignals(os.Args[1:], os.Stderr))
}

// runWithSignals is run until SIGINT or SIGTERM.
func runWithSignals(args []string, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return run(ctx, args, stderr)
}

// options are the command-line settings.
type options struct {
	userHost, cardHost string
	userPort, cardPort int
	cfg                server.Config
	logLevel           slog.Level
}

const usage = `Usage: wsrc-server [flags]

wsrc-server is the WSRC (WebSocket Remote Card) relay. Card agents
(wsrc-agent, pySim's wsrc_card_client.py) connect to the card port and are
identified by their EID and ICCID; users (pySim-shell --wsrc-server-url,
wsrc, the Go client library) connect to the user port, list the cards,
select one and exchange APDUs with it. One user per card at a time.

It is a drop-in for pySim's contrib/wsrc_server.py: the same ports (user
4220, card 4221) and flag names. Both ports listen on loopback by default;
bind the card port to an address the agents can reach, and keep the user
port behind a firewall or on loopback (there is no authentication yet).
"localhost" binds both 127.0.0.1 and ::1.

SIGINT or SIGTERM closes every connection with a reason (WebSocket close
code 1001) and exits with status 0. Exit status 1 means the server could
not run (e.g. a port is taken), 2 a usage error.

Flags:
`

func parseFlags(args []string, out io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("wsrc-server", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprint(out, usage)
		printDefaults(fs, out)
	}
	fs.StringVar(&o.userHost, "user-bind-host", "127.0.0.1", "local host name or IP address to listen on for users")
	fs.IntVar(&o.userPort, "user-bind-port", protocol.DefaultUserPort, "TCP port to listen on for users")
	fs.StringVar(&o.cardHost, "card-bind-host", "127.0.0.1", "local host name or IP address to listen on for card agents")
	fs.IntVar(&o.cardPort, "card-bind-port", protocol.DefaultCardPort, "TCP port to listen on for card agents")
	fs.DurationVar(&o.cfg.RequestTimeout, "request-timeout", server.DefaultRequestTimeout,
		"how long a card agent may take to answer one relayed APDU or reset before it is disconnected")
	fs.BoolVar(&o.cfg.ShowRemoteAddr, "show-remote-addr", false,
		"show users each card agent's IP address and port in list_cards (as pySim does); hidden by default")
	level := fs.String("log-level", "info", "log level: debug, info, warn or error")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if *showVersion {
		fmt.Fprintln(out, "wsrc-server", version.Version)
		return o, flag.ErrHelp
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if err := o.logLevel.UnmarshalText([]byte(*level)); err != nil {
		return o, fmt.Errorf("--log-level: %w", err)
	}
	for _, p := range []struct {
		name string
		port int
	}{{"--user-bind-port", o.userPort}, {"--card-bind-port", o.cardPort}} {
		if p.port < 0 || p.port > 65535 {
			return o, fmt.Errorf("%s: %d is not a TCP port", p.name, p.port)
		}
	}
	if o.cfg.RequestTimeout <= 0 {
		return o, fmt.Errorf("--request-timeout must be positive")
	}
	return o, nil
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

// run parses args, listens and serves until ctx ends. It returns the exit
// status: 0 after an orderly shutdown, 1 on failure, 2 on bad usage.
func run(ctx context.Context, args []string, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "wsrc-server:", err)
		return 2
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: o.logLevel}))
	userLns, err := listen(o.userHost, o.userPort)
	if err != nil {
		logger.Error("cannot listen for users", "err", err)
		return 1
	}
	cardLns, err := listen(o.cardHost, o.cardPort)
	if err != nil {
		closeAll(userLns)
		logger.Error("cannot listen for card agents", "err", err)
		return 1
	}
	if err := serve(ctx, server.New(o.cfg, logger), logger, userLns, cardLns); err != nil {
		logger.Error("shutdown", "err", err)
		return 1
	}
	return 0
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

// serve runs srv on the given listeners (which it owns) until ctx ends,
// then shuts down: no new connections, every open one closed with 1001
// and a reason.
func serve(ctx context.Context, srv *server.Server, logger *slog.Logger, userLns, cardLns []net.Listener) error {
	httpLog := log.New(&slogWriter{logger}, "", 0)
	newHTTP := func(h http.Handler) *http.Server {
		return &http.Server{
			Handler:           h,
			ReadHeaderTimeout: server.DefaultHelloTimeout,
			MaxHeaderBytes:    16 << 10,
			ErrorLog:          httpLog,
		}
	}
	users, cards := newHTTP(srv.UserHandler()), newHTTP(srv.CardHandler())
	errc := make(chan error, len(userLns)+len(cardLns))
	for _, p := range []struct {
		hs   *http.Server
		lns  []net.Listener
		name string
	}{{users, userLns, "user"}, {cards, cardLns, "card"}} {
		for _, ln := range p.lns {
			logger.Info("listening", "port", p.name, "addr", ln.Addr().String())
			go func() { errc <- p.hs.Serve(ln) }()
		}
	}
	logger.Info("wsrc-server started", "version", version.Version)

	var err error
	select {
	case <-ctx.Done():
		logger.Info("shutting down")
	case err = <-errc: // a listener failed
		logger.Error("listener failed", "err", err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	// Listeners first (no new upgrades), then the WebSockets.
	_ = users.Shutdown(sctx)
	_ = cards.Shutdown(sctx)
	if serr := srv.Shutdown(sctx); serr != nil && err == nil {
		err = serr
	}
	return err
}

// slogWriter sends net/http's log lines (e.g. TLS handshake errors) to
// slog.
type slogWriter struct{ l *slog.Logger }

func (w *slogWriter) Write(p []byte) (int, error) {
	w.l.Warn(strings.TrimSpace(string(p)), "source", "net/http")
	return len(p), nil
}
