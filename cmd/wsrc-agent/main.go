// Command wsrc-agent puts the smart cards in this machine's readers on a
// WSRC server, one WebSocket per card (package agent does the work; this
// file holds flags, signals and output only).
//
//	wsrc-agent [flags]            serve every card until SIGINT/SIGTERM
//	wsrc-agent readers [flags]    list readers, slots and cards, then exit
//
// Run `wsrc-agent --help` for the flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/wsrc-go/wsrc/agent"
	"github.com/wsrc-go/wsrc/internal/version"
	"github.com/wsrc-go/wsrc/protocol"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // the agent could not go on
	exitUsage = 2 // bad flags or arguments
)

// envServer is the environment variable that gives --server's default.
const envServer = "WSRC_AGENT_SERVER"

// defaultServer is pySim's default card port URL.
var defaultServer = fmt.Sprintf("ws://127.0.0.1:%d/", protocol.DefaultCardPort)

const usageText = `wsrc-agent puts the smart cards in this machine's readers on a WSRC server
(WebSocket Remote Card, wire-compatible with Osmocom pySim's WSRC): one
WebSocket per present card to the server's card port. The server
identifies each card (EID, ICCID) and relays users' APDUs to it. The agent
reconnects whenever the server is unreachable or drops the connection
(backoff up to 30 s), opens a session when a card is inserted and closes
it when the card is removed or its reader disappears. SIGINT or SIGTERM
closes every session cleanly and exits 0.

Usage:
  wsrc-agent [flags]            serve every card until SIGINT/SIGTERM
  wsrc-agent readers [flags]    list backends, readers, slots and cards,
                                then exit (see "readers" below)

Flags:
`

const usageTail = `
Backends (--backend, comma-separated):
  sim    simulated UICCs (card/sim), --sim N of them; card 0 is the
         recorded pySim test eUICC (ICCID 8949440000001155314), card i
         has ICCID and EID shifted by i with valid check digits
  pcsc   the readers of the PC/SC service (pcscd). Cards are opened
         exclusively (no other PC/SC application can use a card while
         the agent serves it) unless --pcsc-shared. pcscd may be stopped,
         started late or restarted: the agent waits for it and serves
         the cards again when it is back. PCSCLITE_CSOCK_NAME names
         another pcscd socket.
  ccid   USB CCID readers, directly over libusb (the agent's own CCID
         driver; it needs permission to claim the readers, see the udev
         rule in systemd/). A reader that pcscd holds is skipped.
  auto   the default when --sim is not given: ccid and pcsc together.
         ccid claims every USB reader it can; readers that pcscd holds
         (or that are not USB CCID) are served through pcsc. Which of the
         two wins a freshly plugged reader is a race: keep pcscd off the
         agent's readers (PCSCLITE_FILTER_IGNORE_READER_NAMES), or choose
         --backend ccid or pcsc.
  --sim N adds the sim backend to whatever --backend chose.

Reader selection (--reader-include and --reader-exclude, repeatable; they
apply to the pcsc and ccid backends alike):
  A pattern is a glob matched against the whole reader name ("*" any run
  of characters but "/", "?" one character, "[...]" a class), or a Go
  regexp between slashes that may match anywhere in the name
  ("/(?i)yubikey/"; anchor it with ^ and $). A reader is used when it
  matches some --reader-include (or none is given) and no
  --reader-exclude. The two backends name a reader differently: pcsc
  uses pcscd's name ("HID Global OMNIKEY 3x21 Smart Card Reader [...] 00
  00"), ccid the USB product name and port ("OMNIKEY 3x21 Smart Card
  Reader [1-1.2]"); "wsrc-agent readers" shows both. A reader that ccid
  leaves out is never claimed, so under auto pcscd may serve it (unless
  a pcsc pattern leaves it out too).

readers:
  Shows what this agent sees, as pcsc_scan would but per backend: each
  backend loaded or skipped (with the reason, e.g. "pcscd not running"),
  each reader with the backend that owns it or why it is left out (e.g.
  excluded by a pattern), and each card's ATR, ICCID and EID. To read
  those it opens every card briefly, so a card held by another
  application (a running wsrc-agent holds its cards exclusively) shows an
  error instead. It does not ask the server: an agent only knows the
  server's card port, which cannot list cards. For the server's view run
  "wsrc list" against its user port.

Environment:
  WSRC_AGENT_SERVER    default for --server
  PCSCLITE_CSOCK_NAME  pcscd's socket (default /run/pcscd/pcscd.comm)

Examples:
  wsrc-agent --server ws://relay.example.org:4221/
  wsrc-agent --server ws://relay.example.org:4221/ --backend pcsc --reader-exclude '/(?i)yubikey/'
  WSRC_AGENT_SERVER=ws://127.0.0.1:4221/ wsrc-agent --sim 1 --sim-protocol t1
  wsrc-agent readers
  wsrc-agent readers --sim 2
`

// options are the parsed command line.
type options struct {
	server         string
	backend        string
	sim            int
	simSet         bool // --sim was given
	simProtocol    string
	simGetResponse bool
	logLevel       string
	agentName      string
	showVersion    bool
	readerInclude  patterns
	readerExclude  patterns
	pcscShared     bool

	log *slog.Logger // set by dispatch, for the backends

	args []string // positional arguments: the subcommand
}

func newFlagSet(o *options, getenv func(string) string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("wsrc-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	server := defaultServer
	if v := getenv(envServer); v != "" {
		server = v
	}
	host, _ := os.Hostname()
	fs.StringVar(&o.server, "server", server, "`URL` of the WSRC server's card port (ws:// or wss://); env "+envServer)
	fs.StringVar(&o.backend, "backend", "", "card `backends` to use: sim, pcsc, ccid or auto, comma-separated (default auto, or sim with --sim; see below)")
	fs.IntVar(&o.sim, "sim", 0, "number `N` of simulated cards (implies --backend sim when no other backend is chosen; default 1 with --backend sim)")
	fs.StringVar(&o.simProtocol, "sim-protocol", "t0", "`protocol` the simulated cards announce in their ATR: t0 or t1")
	fs.BoolVar(&o.simGetResponse, "sim-getresponse", false, "make simulated cards answer like real T=0 cards (61xx + GET RESPONSE, 6Cxx)")
	fs.StringVar(&o.logLevel, "log-level", "info", "log `level`: debug, info, warn or error")
	fs.StringVar(&o.agentName, "agent-name", host, "`name` this agent gives the server in hello")
	fs.Var(&o.readerInclude, "reader-include", "use only readers whose name matches `pattern` (glob, or /regexp/); repeatable")
	fs.Var(&o.readerExclude, "reader-exclude", "never use readers whose name matches `pattern` (glob, or /regexp/); repeatable")
	fs.BoolVar(&o.pcscShared, "pcsc-shared", false, "open PC/SC cards in shared mode, so other PC/SC applications can use them too (default exclusive)")
	fs.BoolVar(&o.showVersion, "version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprint(stderr, usageText)
		fs.PrintDefaults()
		fmt.Fprint(stderr, usageTail)
	}
	return fs
}

// patterns is a repeatable string flag.
type patterns []string

func (p *patterns) String() string { return strings.Join(*p, ", ") }

func (p *patterns) Set(v string) error {
	if v == "" {
		return errors.New("empty pattern")
	}
	*p = append(*p, v)
	return nil
}

// parseArgs parses flags before and after the subcommand:
// `wsrc-agent --sim 2 readers` and `wsrc-agent readers --sim 2` alike.
func parseArgs(args []string, getenv func(string) string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := newFlagSet(o, getenv, stderr)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	rest := fs.Args()
	if len(rest) > 0 {
		o.args = append(o.args, rest[0])
		if err := fs.Parse(rest[1:]); err != nil {
			return nil, err
		}
		o.args = append(o.args, fs.Args()...)
	}
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "sim" {
			o.simSet = true
		}
	})
	return o, nil
}

// usageError is a command line mistake: reported with a hint, exit 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return usageError{fmt.Sprintf(format, args...)}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	o, err := parseArgs(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		return exitUsage // flag has printed the error and the usage
	}
	if o.showVersion {
		fmt.Fprintln(stdout, "wsrc-agent", version.Version)
		return exitOK
	}
	err = dispatch(ctx, o, stdout, stderr)
	var ue usageError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "wsrc-agent: %v\nRun 'wsrc-agent --help' for usage.\n", err)
		return exitUsage
	default:
		fmt.Fprintf(stderr, "wsrc-agent: %v\n", err)
		return exitError
	}
}

func dispatch(ctx context.Context, o *options, stdout, stderr io.Writer) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return usagef("--log-level %q: want debug, info, warn or error", o.logLevel)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	o.log = log
	readers := len(o.args) > 0 && o.args[0] == "readers"
	switch {
	case len(o.args) > 0 && !readers:
		return usagef("unknown command %q (the only command is readers)", o.args[0])
	case len(o.args) > 1:
		return usagef("readers takes no arguments, got %q", strings.Join(o.args[1:], " "))
	}
	backends, err := o.backends()
	if err != nil {
		return err
	}
	if readers {
		err := printReaders(ctx, stdout, agent.Describe(ctx, backends...))
		closeBackends(backends, log)
		return err
	}
	return serve(ctx, o, log, backends)
}

// closeBackends releases what Probe left open (the ccid backend keeps its
// driver, and the cards it opened, until Close).
func closeBackends(backends []agent.Backend, log *slog.Logger) {
	for _, b := range backends {
		if c, ok := b.(io.Closer); ok {
			if err := c.Close(); err != nil {
				log.Warn("closing backend", "backend", b.Name(), "err", err)
			}
		}
	}
}

func serve(ctx context.Context, o *options, log *slog.Logger, backends []agent.Backend) error {
	m := agent.NewManager(agent.Config{
		Server: o.server,
		Agent:  o.agentName,
		Logger: log,
	}, backends...)
	names := make([]string, len(backends))
	for i, b := range backends {
		names[i] = b.Name()
	}
	log.Info("wsrc-agent starting", "version", version.Version, "server", o.server, "backends", strings.Join(names, ","))
	err := m.Run(ctx)
	if errors.Is(err, agent.ErrBadServerURL) {
		return usageError{fmt.Sprintf("--server: %v", err)}
	}
	if err != nil {
		return err
	}
	log.Info("wsrc-agent stopped")
	return nil
}
