package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/wsrc-go/wsrc/client"
	"github.com/wsrc-go/wsrc/internal/version"
	"github.com/wsrc-go/wsrc/protocol"
)

// Exit codes.
const (
	exitOK          = 0   // success
	exitServer      = 1   // the server refused a request (its `error` message is printed)
	exitUsage       = 2   // bad command line or shell input
	exitFailure     = 3   // could not connect, connection lost, timeout, protocol violation
	exitInterrupted = 130 // interrupted by a signal
)

// dialTimeout bounds connecting and saying hello (--timeout, if shorter,
// bounds it too).
const dialTimeout = 30 * time.Second

// defaultServer is the server URL when neither --server nor WSRC_SERVER
// gives one: pySim's default user port on this host.
const defaultServer = "ws://127.0.0.1:4220/"

// cli is one run of the command with its environment, so that tests can
// run it in-process.
type cli struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
}

// options are the flags every command knows, and the card selection.
type options struct {
	server    string
	timeout   time.Duration
	verbose   bool
	tokenFile string // --token-file
	caFile    string // --tls-ca-file
	json      bool
	iccid     string
	eid       string
	atr       string
	id        string
	// list's filter
	agent  string
	reader string
	limit  int
	vpcd   vpcdOptions // wsrc vpcd only
}

// usageError is a mistake on the command line; the message is shown with
// a pointer to --help.
type usageError struct {
	cmd string
	msg string
}

func (e *usageError) Error() string { return e.msg }

func usagef(cmd, format string, args ...any) error {
	return &usageError{cmd: cmd, msg: fmt.Sprintf(format, args...)}
}

// command is one subcommand.
type command struct {
	name    string
	summary string
	usage   string // the synopsis and description, then examples
	// flags it takes besides the common ones
	json, selects bool
	// flags registers the command's own flags, if any
	flags func(fs *flag.FlagSet, o *options)
	run   func(cl *cli, ctx context.Context, o *options, args []string) error
}

var commands []*command

func init() {
	commands = []*command{listCmd, apduCmd, resetCmd, shellCmd, vpcdCmd, versionCmd}
}

const mainUsage = `wsrc - use smart cards in remote readers through a WSRC server

Usage:
  wsrc <command> [flags] [arguments]

Commands:
%s
Common flags (before or after the command):
  --server URL       the server's user port (default $WSRC_SERVER, else ` + defaultServer + `)
                     ws://host:port/ or wss://; user:password@ in it is sent as basic auth
  --timeout D        how long each request may wait for the server (default %v)
  --token-file FILE  send the user token in FILE as a bearer token (default $WSRC_TOKEN, or
                     the systemd credential wsrc-token)
  --tls-ca-file FILE trust the CA certificates in this PEM file (not the system's) for wss://
  -v, --verbose      trace every WebSocket frame on stderr

Card selection (apdu, reset, shell, vpcd), exactly one of:
  --iccid ICCID  --eid EID  --atr ATR  --id TYPE=VALUE

Exit status:
  0    success
  1    the server refused a request; its message is printed verbatim
  2    usage error (bad flags, bad APDU hex)
  3    could not connect, connection lost, timeout, or a protocol violation
  130  interrupted

Run 'wsrc help <command>' or 'wsrc <command> --help' for a command's details.
`

func (cl *cli) printMainUsage(w io.Writer) {
	var b strings.Builder
	for _, c := range commands {
		fmt.Fprintf(&b, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, mainUsage, b.String(), client.DefaultRequestTimeout)
}

// run runs the command line args (without the program name) and returns
// the exit code. ctx is cancelled on SIGINT/SIGTERM.
func (cl *cli) run(ctx context.Context, args []string) int {
	o := &options{server: cl.getenv("WSRC_SERVER"), timeout: client.DefaultRequestTimeout}
	if o.server == "" {
		o.server = defaultServer
	}
	top := flag.NewFlagSet("wsrc", flag.ContinueOnError)
	top.SetOutput(io.Discard)
	registerCommon(top, o)
	if err := top.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			cl.printMainUsage(cl.stdout)
			return exitOK
		}
		return cl.fail(ctx, usagef("", "%v", err))
	}
	args = top.Args()
	if len(args) == 0 {
		cl.printMainUsage(cl.stderr)
		return exitUsage
	}
	name, args := args[0], args[1:]
	if name == "help" {
		if len(args) == 0 {
			cl.printMainUsage(cl.stdout)
			return exitOK
		}
		name, args = args[0], []string{"--help"}
	}
	var cmd *command
	for _, c := range commands {
		if c.name == name {
			cmd = c
		}
	}
	if cmd == nil {
		return cl.fail(ctx, usagef("", "unknown command %q", name))
	}
	fs := flag.NewFlagSet("wsrc "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	registerCommon(fs, o)
	if cmd.json {
		fs.BoolVar(&o.json, "json", false, "print machine-readable JSON")
	}
	if cmd.selects {
		fs.StringVar(&o.iccid, "iccid", "", "select the card by `ICCID` (with or without the trailing f)")
		fs.StringVar(&o.eid, "eid", "", "select the card by `EID`")
		fs.StringVar(&o.atr, "atr", "", "select the card by `ATR` (hex)")
		fs.StringVar(&o.id, "id", "", "select the card by any identity the server knows, as `TYPE=VALUE`")
	}
	if cmd.flags != nil {
		cmd.flags(fs, o)
	}
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printCommandUsage(cl.stdout, cmd, fs)
			return exitOK
		}
		return cl.fail(ctx, usagef(cmd.name, "%v", err))
	}
	return cl.fail(ctx, cmd.run(cl, ctx, o, pos))
}

func registerCommon(fs *flag.FlagSet, o *options) {
	fs.StringVar(&o.server, "server", o.server, "the server's user port `URL` (env WSRC_SERVER)")
	fs.DurationVar(&o.timeout, "timeout", o.timeout, "how long each request may wait for the server")
	fs.BoolVar(&o.verbose, "verbose", o.verbose, "trace every WebSocket frame on stderr")
	fs.BoolVar(&o.verbose, "v", o.verbose, "short for --verbose")
	fs.StringVar(&o.tokenFile, "token-file", o.tokenFile, "send the token in `FILE` as a bearer token (default: $WSRC_TOKEN, else the systemd credential wsrc-token)")
	fs.StringVar(&o.caFile, "tls-ca-file", o.caFile, "trust the CA certificates in PEM `FILE` instead of the system roots for wss://")
}

// parseInterspersed parses flags wherever they stand among the
// arguments (until "--") and returns the other arguments in order.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		switch {
		case len(rest) == 0:
			return pos, nil
		case len(rest) < len(args) && args[len(args)-len(rest)-1] == "--":
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

func printCommandUsage(w io.Writer, cmd *command, fs *flag.FlagSet) {
	fmt.Fprintf(w, "wsrc %s - %s\n\n%s\nFlags:\n", cmd.name, cmd.summary, cmd.usage)
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name == "v" {
			return
		}
		name, usage := flag.UnquoteUsage(f)
		left := "--" + f.Name
		if f.Name == "verbose" {
			left = "-v, --verbose"
		}
		if name != "" {
			left += " " + name
		}
		if def := f.DefValue; def != "" && def != "false" {
			if u, err := url.Parse(def); err == nil && u.User != nil {
				def = u.Redacted() // the URL may come from WSRC_SERVER
			}
			usage += fmt.Sprintf(" (default %s)", def)
		}
		fmt.Fprintf(w, "  %-22s %s\n", left, usage)
	})
}

// fail reports err on stderr and returns its exit code; nil is success.
func (cl *cli) fail(ctx context.Context, err error) int {
	if err == nil {
		return exitOK
	}
	code := exitCode(ctx, err)
	var ue *usageError
	if errors.As(err, &ue) {
		prefix, help := "wsrc", "wsrc --help"
		if ue.cmd != "" {
			prefix, help = "wsrc "+ue.cmd, "wsrc "+ue.cmd+" --help"
		}
		fmt.Fprintf(cl.stderr, "%s: %s\nRun '%s' for usage.\n", prefix, ue.msg, help)
		return code
	}
	if code == exitInterrupted {
		fmt.Fprintln(cl.stderr, "wsrc: interrupted")
		return code
	}
	fmt.Fprintf(cl.stderr, "wsrc: %v\n", err)
	return code
}

func exitCode(ctx context.Context, err error) int {
	var ue *usageError
	var se *client.ServerError
	switch {
	case errors.As(err, &ue):
		return exitUsage
	case errors.As(err, &se):
		return exitServer
	case ctx.Err() != nil:
		return exitInterrupted
	}
	return exitFailure
}

// serverURL accepts host:port without a scheme as ws://host:port/.
func serverURL(s string) string {
	if !strings.Contains(s, "://") {
		return "ws://" + s
	}
	return s
}

// dial connects to the server named by o.
func (cl *cli) dial(ctx context.Context, o *options, extra ...client.Option) (*client.Client, error) {
	opts, err := cl.connOptions(o)
	if err != nil {
		return nil, err
	}
	opts = append(opts, extra...)
	if o.verbose {
		h := slog.NewTextHandler(cl.stderr, &slog.HandlerOptions{
			Level: slog.LevelDebug,
			ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
				if len(groups) == 0 && a.Key == slog.TimeKey {
					return slog.Attr{}
				}
				return a
			},
		})
		opts = append(opts, client.WithLogger(slog.New(h)))
	}
	dctx, cancel := context.WithTimeout(ctx, min(o.timeout, dialTimeout))
	defer cancel()
	return client.Dial(dctx, serverURL(o.server), opts...)
}

// selection returns the identity type and value the flags ask for.
func (o *options) selection(cmd string) (idType, idStr string, err error) {
	if o.identityFlags() != 1 {
		return "", "", usagef(cmd, "choose the card with exactly one of --iccid, --eid, --atr, --id")
	}
	return o.identity(cmd)
}

// identityFlags counts the identity flags given.
func (o *options) identityFlags() int {
	n := 0
	for _, s := range []string{o.iccid, o.eid, o.atr, o.id} {
		if s != "" {
			n++
		}
	}
	return n
}

// identity returns the identity type and value of the one identity flag
// given ("" when none).
func (o *options) identity(cmd string) (idType, idStr string, err error) {
	switch {
	case o.identityFlags() == 0:
		return "", "", nil
	case o.iccid != "":
		return "iccid", strings.TrimSpace(o.iccid), nil
	case o.eid != "":
		return "eid", strings.TrimSpace(o.eid), nil
	case o.atr != "":
		atr, err := parseHexID(o.atr)
		if err != nil {
			return "", "", usagef(cmd, "--atr: %v", err)
		}
		return "atr", atr, nil
	}
	t, v, ok := strings.Cut(o.id, "=")
	t, v = strings.TrimSpace(t), strings.TrimSpace(v)
	if !ok || t == "" || v == "" {
		return "", "", usagef(cmd, "--id wants TYPE=VALUE, e.g. --id imsi=262011234567890, got %q", o.id)
	}
	return t, v, nil
}

// selectCard connects and selects the card the flags name.
func (cl *cli) selectCard(ctx context.Context, cmd string, o *options, extra ...client.Option) (*client.Client, protocol.Identities, error) {
	idType, idStr, err := o.selection(cmd)
	if err != nil {
		return nil, nil, err
	}
	c, err := cl.dial(ctx, o, extra...)
	if err != nil {
		return nil, nil, err
	}
	ids, err := c.Select(ctx, idType, idStr)
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return c, ids, nil
}

var versionCmd = &command{
	name:    "version",
	summary: "print the version",
	usage:   "Usage:\n  wsrc version\n",
	run: func(cl *cli, _ context.Context, _ *options, args []string) error {
		if len(args) > 0 {
			return usagef("version", "no arguments expected")
		}
		fmt.Fprintln(cl.stdout, "wsrc", version.Version)
		return nil
	},
}
