// Command wsrc-agent puts the smart cards in this machine's readers on a
// WSRC server, one WebSocket per card (package agent does the work; this
// command holds flags, the configuration file, signals, systemd and
// output only).
//
//	wsrc-agent [flags]                 serve every card until SIGINT/SIGTERM
//	wsrc-agent readers [flags]         list readers, slots and cards, then exit
//	wsrc-agent check-config [flags]    check the configuration, then exit
//
// Run `wsrc-agent --help` for the flags.
package main

import (
	"context"
	"crypto/tls"
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
	"github.com/wsrc-go/wsrc/internal/config"
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
	exitUsage = 2 // bad flags, arguments or configuration (systemd does not retry it)
)

// envServer is the environment variable that stands in for --server.
var envServer = config.EnvName(envPrefix, "server")

// defaultServer is pySim's default card port URL.
var defaultServer = fmt.Sprintf("ws://127.0.0.1:%d/", protocol.DefaultCardPort)

const usageText = `wsrc-agent puts the smart cards in this machine's readers on a WSRC server
(WebSocket Remote Card, wire-compatible with Osmocom pySim's WSRC): one
WebSocket per present card to the server's card port. The server
identifies each card (EID, ICCID) and relays users' APDUs to it. The agent
reconnects whenever the server is unreachable or drops the connection
(backoff up to 8 s), opens a session when a card is inserted and closes
it when the card is removed or its reader disappears. SIGINT or SIGTERM
closes every session cleanly and exits 0.

Usage:
  wsrc-agent [flags]               serve every card until SIGINT/SIGTERM
  wsrc-agent readers [flags]       list backends, readers, slots and cards,
                                   then exit (see "readers" below)
  wsrc-agent check-config [flags]  check the configuration (file,
                                   environment, flags), print OK or every
                                   problem, exit 0 or 2

Flags:
`

const usageTail = `
Configuration (/etc/wsrc/agent.toml, or --config FILE):
  A TOML file whose keys are the flags' names with "_" for "-" (server,
  agent_name, backend, sim, reader_exclude = [...], pcsc_shared, log_level,
  token_file...), plus token, and a [tls] table with ca_file, pin_sha256 =
  [...], cert_file and key_file (the --tls-* flags). Precedence: flags, then
  environment, then the file, then the defaults. A missing
  /etc/wsrc/agent.toml is not an error; a file named by --config (or
  WSRC_AGENT_CONFIG) must exist; --config "" reads no file. Unknown keys
  and bad values are errors naming the file, line and key; the agent then
  exits 2. See docs/examples/agent.toml.

Environment:
  WSRC_AGENT_<FLAG>    stands in for any flag: the flag name in upper case
                       with "_" for "-" (WSRC_AGENT_SERVER,
                       WSRC_AGENT_TLS_CA_FILE, WSRC_AGENT_TOKEN_FILE...)
  WSRC_AGENT_TOKEN     the agent token itself (there is no --token flag:
                       a command line is visible to every local user)
  CREDENTIALS_DIRECTORY  with no token configured, the systemd credential
                       "agent-token" is read if present
                       (LoadCredential=agent-token:/etc/wsrc/agent.token)
  PCSCLITE_CSOCK_NAME  pcscd's socket (default /run/pcscd/pcscd.comm)

Server connection:
  wss:// URLs are verified against the system's CA roots, or against
  --tls-ca-file. --tls-pin-sha256 accepts exactly the server certificate
  with that SHA-256 fingerprint (as "openssl x509 -noout -fingerprint
  -sha256" prints it), e.g. a self-signed one; with --tls-ca-file as well,
  both checks apply. --tls-cert-file and --tls-key-file present a client
  certificate. The token is sent as "Authorization: Bearer <token>" and
  never logged. When the server refuses it (HTTP 401) the agent logs
  "server refused the agent token" and retries with its backoff.

Backends (--backend, comma-separated):
  sim    simulated UICCs (card/sim), --sim N of them; card 0 is the
         recorded pySim test eUICC (ICCID 8949440000001155314), card i
         has ICCID and EID shifted by i with valid check digits
  pcsc   the readers of the PC/SC service (pcscd). Cards are opened
         exclusively (no other PC/SC application can use a card while
         the agent serves it) unless --pcsc-shared; a shared card that
         another application resets fails the user's next APDU with
         "card reset by another application", and the one after works.
         pcscd may be stopped, started late or restarted: the agent
         waits for it and serves the cards again when it is back.
         PCSCLITE_CSOCK_NAME names another pcscd socket.
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

systemd (Type=notify; all of this is skipped outside systemd):
  READY=1 is sent when the server has accepted the first card session, or
  10 s after start, whichever comes first: a Pi whose server is down (or
  that has no card in yet) still starts, and keeps retrying, instead of
  being killed and restarted by systemd for a start timeout. STATUS= says
  how many cards are present and connected ("2 cards, 2 connected"),
  at most every 5 s. Watchdog pings (half of WatchdogSec=) stop when the
  agent's card manager no longer answers, so systemd restarts a wedged
  agent. SIGTERM sends STOPPING=1 and closes every session with 1001.

Examples:
  wsrc-agent --server wss://relay.example.org:4221/ --token-file /etc/wsrc/agent.token
  wsrc-agent --server ws://relay.example.org:4221/ --backend pcsc --reader-exclude '/(?i)yubikey/'
  WSRC_AGENT_SERVER=ws://127.0.0.1:4221/ wsrc-agent --sim 1 --sim-protocol t1
  wsrc-agent check-config --config ./agent.toml
  wsrc-agent readers
  wsrc-agent readers --sim 2
`

// options are the settings from flags, environment and file.
type options struct {
	configPath     string
	server         string
	backend        string
	sim            int
	simSet         bool // --sim was given (flag, environment or file)
	simProtocol    string
	simGetResponse bool
	logLevel       string
	agentName      string
	showVersion    bool
	readerInclude  stringList
	readerExclude  stringList
	pcscShared     bool
	tokenFile      string
	tls            agent.TLSOptions
	tlsPins        stringList // --tls-pin-sha256, copied into tls

	args []string // positional arguments: the subcommand

	// Where each flag's value came from, by flag name.
	origin map[string]origin
	// Set by loadFile.
	file       *config.File // nil when no file was read
	configUsed string       // its path
	fileToken  string       // the file's token key
	// Set by validate.
	level       slog.LevelVar // the logger's level
	token       string        // never logged
	tokenFrom   string        // where the token came from, for the log
	tlsConfig   *tls.Config
	backendList []agent.Backend
	warnings    []string // logged once the logger exists

	log *slog.Logger // set by dispatch (at o.level), for the backends
}

// logger is the program's logger, or a silent one before dispatch has
// made it.
func (o *options) logger() *slog.Logger {
	if o.log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.log
}

func newFlagSet(o *options, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("wsrc-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	host, _ := os.Hostname()
	fs.StringVar(&o.configPath, "config", defaultConfigPath, "configuration `file` (TOML); \"\" reads none")
	fs.StringVar(&o.server, "server", defaultServer, "`URL` of the WSRC server's card port (ws:// or wss://)")
	fs.StringVar(&o.tokenFile, "token-file", "", "read the agent's token from `file` (e.g. a systemd credential); see WSRC_AGENT_TOKEN")
	fs.StringVar(&o.tls.CAFile, "tls-ca-file", "", "trust the CA certificates in PEM `file` instead of the system roots for wss://")
	fs.Var(&o.tlsPins, "tls-pin-sha256", "accept the server certificate with this SHA-256 `fingerprint` (hex, colons allowed); repeatable")
	fs.StringVar(&o.tls.CertFile, "tls-cert-file", "", "client certificate (PEM `file`) to present to the server")
	fs.StringVar(&o.tls.KeyFile, "tls-key-file", "", "private key (PEM `file`) of --tls-cert-file")
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

// stringList is a repeatable string flag.
type stringList []string

func (p *stringList) String() string { return strings.Join(*p, ", ") }

func (p *stringList) Set(v string) error {
	if v == "" {
		return errors.New("empty value")
	}
	*p = append(*p, v)
	return nil
}

// parseArgs parses flags before and after the subcommand
// (`wsrc-agent --sim 2 readers` and `wsrc-agent readers --sim 2` alike),
// then lets the environment stand in for flags not given. It records
// where each setting came from; the file is read later (loadFile).
func parseArgs(args []string, lookup func(string) (string, bool), stderr io.Writer) (*options, error) {
	o := &options{origin: map[string]origin{}}
	fs := newFlagSet(o, stderr)
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
	cmdline := config.Explicit(fs)
	if err := config.FlagsFromEnv(fs, envPrefix, lookup); err != nil {
		fmt.Fprintf(stderr, "wsrc-agent: %v\n", err)
		return nil, err
	}
	for name := range config.Explicit(fs) {
		o.origin[name] = fromEnv
		if cmdline[name] {
			o.origin[name] = fromFlag
		}
	}
	o.simSet = o.origin["sim"] != fromDefault
	return o, nil
}

// usageError is a command line mistake: reported with a hint, exit 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return usageError{fmt.Sprintf(format, args...)}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	lookup := func(k string) (string, bool) {
		v := getenv(k)
		return v, v != ""
	}
	o, err := parseArgs(args, lookup, stderr)
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
	err = dispatch(ctx, o, lookup, stdout, stderr)
	var (
		ue  usageError
		ce  configErrors
		fe  *config.Error
		fes config.Errors
	)
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "wsrc-agent: %v\nRun 'wsrc-agent --help' for usage.\n", err)
		return exitUsage
	case errors.As(err, &ce), errors.As(err, &fe), errors.As(err, &fes):
		for line := range strings.SplitSeq(err.Error(), "\n") {
			fmt.Fprintf(stderr, "wsrc-agent: %s\n", line)
		}
		return exitUsage
	default:
		fmt.Fprintf(stderr, "wsrc-agent: %v\n", err)
		return exitError
	}
}

// configure reads the file and validates everything (see validate for
// connect).
func configure(o *options, lookup func(string) (string, bool), connect bool) error {
	o.tls.PinSHA256 = o.tlsPins
	if err := o.loadFile(); err != nil {
		return err
	}
	return o.validate(lookup, connect)
}

func dispatch(ctx context.Context, o *options, lookup func(string) (string, bool), stdout, stderr io.Writer) error {
	cmd := ""
	if len(o.args) > 0 {
		cmd = o.args[0]
	}
	switch {
	case cmd != "" && cmd != "readers" && cmd != "check-config":
		return usagef("unknown command %q (the commands are readers and check-config)", cmd)
	case len(o.args) > 1:
		return usagef("%s takes no arguments, got %q", cmd, strings.Join(o.args[1:], " "))
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: &o.level}))
	o.log = log // its level is set by configure
	err := configure(o, lookup, cmd != "readers")
	if cmd == "check-config" {
		return checkConfig(o, err, stdout)
	}
	if err != nil {
		return err
	}
	for _, w := range o.warnings {
		log.Warn(w)
	}
	if cmd == "readers" {
		err := printReaders(ctx, stdout, agent.Describe(ctx, o.backendList...))
		closeBackends(o.backendList, log)
		return err
	}
	return serve(ctx, o, log)
}

// checkConfig is `wsrc-agent check-config`: OK and a summary, or every
// problem (exit 2).
func checkConfig(o *options, err error, stdout io.Writer) error {
	if err != nil {
		return err
	}
	closeBackends(o.backendList, o.logger())
	file := o.configUsed
	if file == "" {
		file = "none"
	}
	names := make([]string, len(o.backendList))
	for i, b := range o.backendList {
		names[i] = b.Name()
	}
	fmt.Fprintf(stdout, "OK\nconfiguration file: %s\nserver: %s\nbackends: %s\n", file, o.server, strings.Join(names, ","))
	switch {
	case o.token != "":
		fmt.Fprintf(stdout, "token: from %s\n", o.tokenFrom)
	default:
		fmt.Fprintln(stdout, "token: none")
	}
	for _, w := range o.warnings {
		fmt.Fprintf(stdout, "warning: %s\n", w)
	}
	return nil
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

func serve(ctx context.Context, o *options, log *slog.Logger) error {
	m := agent.NewManager(agent.Config{
		Server: o.server,
		Agent:  o.agentName,
		Logger: log,
		TLS:    o.tlsConfig,
		Token:  o.token,
	}, o.backendList...)
	names := make([]string, len(o.backendList))
	for i, b := range o.backendList {
		names[i] = b.Name()
	}
	attrs := []any{"version", version.Version, "server", o.server, "backends", strings.Join(names, ",")}
	if o.configUsed != "" {
		attrs = append(attrs, "config", o.configUsed)
	}
	if o.token != "" {
		attrs = append(attrs, "token_from", o.tokenFrom)
	}
	log.Info("wsrc-agent starting", attrs...)
	if cleartextToken(o.server, o.token) {
		log.Warn("the agent token travels unencrypted to a ws:// server on another machine; use wss://")
	}
	err := runWithSystemd(ctx, m, log)
	if errors.Is(err, agent.ErrBadServerURL) {
		return usageError{fmt.Sprintf("--server: %v", err)}
	}
	if err != nil {
		return err
	}
	log.Info("wsrc-agent stopped")
	return nil
}
