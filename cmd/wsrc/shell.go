package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"golang.org/x/term"

	"github.com/wsrc-go/wsrc/client"
	"github.com/wsrc-go/wsrc/protocol"
)

var shellCmd = &command{
	name:    "shell",
	summary: "interactive APDU prompt (or a script on stdin)",
	selects: true,
	usage: `Usage:
  wsrc shell (--iccid ICCID | --eid EID | --atr ATR | --id TYPE=VALUE)

Selects the card and reads commands, one a line:
` + shellHelp + `
On a terminal it prompts, with line editing and history (up/down arrows);
errors are shown and the prompt comes back. Otherwise it reads stdin as a
script: each command is echoed ("> ...") before its result, and the first
failing line ends the run with its exit status.

Examples:
  wsrc shell --iccid 8949440000001155314
  printf '00a40004023f00\n00a40004022fe2\n00b000000a\n' | wsrc shell --eid 89049032123451234512345678901235
  wsrc shell --atr 3b9f96801fc78031e073fe211b575352435653494da3 < script.apdu
`,
	run: runShell,
}

const shellHelp = `  APDU     a command APDU in hex: 00a40004023f00, or 00 a4 00 04 02 3f 00
  reset    reset the card and show its new ATR
  help     show this list
  quit     leave (also: exit, end of input, Ctrl-D, Ctrl-C)
  Empty lines and lines starting with # are skipped.
`

// lineReader gives one line of input at a time; io.EOF ends it.
type lineReader interface {
	ReadLine() (string, error)
}

// maxLine bounds a line of script input: an extended APDU in hex with a
// separator between every byte, and room to spare.
const maxLine = 4 * client.MaxCommandLen

// scanLines reads a script from a plain reader.
type scanLines struct{ s *bufio.Scanner }

func newScanLines(r io.Reader) scanLines {
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 0, 4096), maxLine)
	return scanLines{s}
}

func (l scanLines) ReadLine() (string, error) {
	if l.s.Scan() {
		return l.s.Text(), nil
	}
	if err := l.s.Err(); err != nil {
		return "", err
	}
	return "", io.EOF
}

// syncWriter serialises writes from the shell and from the client's
// reader goroutine (server notices).
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func runShell(cl *cli, ctx context.Context, o *options, args []string) error {
	if len(args) > 0 {
		return usagef("shell", "no arguments expected, got %q (APDUs go to stdin, or use wsrc apdu)", args[0])
	}
	if _, _, err := o.selection("shell"); err != nil {
		return err
	}
	sh := &shell{out: cl.stdout, errOut: &syncWriter{w: cl.stderr}}
	var lines lineReader = newScanLines(cl.stdin)
	inFd, outFd, tty := terminalFds(cl.stdin, cl.stdout)
	var t *term.Terminal
	if tty {
		t = term.NewTerminal(struct {
			io.Reader
			io.Writer
		}{cl.stdin, cl.stdout}, "wsrc> ")
		if w, h, err := term.GetSize(outFd); err == nil && w > 0 && h > 0 {
			_ = t.SetSize(w, h)
		}
		// The Terminal is safe for concurrent writes and redraws the
		// prompt after them.
		sh.out, sh.errOut, sh.interactive, lines = t, t, true, t
	}
	notice := client.WithNoticeHandler(func(m string) { fmt.Fprintf(sh.errOut, "server: %s\n", m) })
	dialer := *cl
	dialer.stderr = sh.errOut // the --verbose trace, through the Terminal if there is one
	c, ids, err := dialer.selectCard(ctx, "shell", o, notice)
	if err != nil {
		return err
	}
	defer c.Close()
	sh.c = c
	if tty {
		old, err := term.MakeRaw(inFd)
		if err != nil {
			return fmt.Errorf("setting up the terminal: %w", err)
		}
		defer term.Restore(inFd, old)
		fmt.Fprintf(t, "Selected card %s\nType an APDU in hex, reset, help or quit.\n", describe(ids))
	}
	return sh.run(ctx, lines)
}

// terminalFds reports whether both stdin and stdout are terminals.
func terminalFds(in io.Reader, out io.Writer) (inFd, outFd int, ok bool) {
	fi, ok1 := in.(*os.File)
	fo, ok2 := out.(*os.File)
	if !ok1 || !ok2 || !term.IsTerminal(int(fi.Fd())) || !term.IsTerminal(int(fo.Fd())) {
		return 0, 0, false
	}
	return int(fi.Fd()), int(fo.Fd()), true
}

// describe names a card by its identities, most specific first.
func describe(ids protocol.Identities) string {
	var parts []string
	for _, k := range []string{protocol.IdentityICCID, protocol.IdentityEID, protocol.IdentityATR} {
		if v := ids[k]; v != "" {
			parts = append(parts, k+" "+sanitize(v))
		}
	}
	return strings.Join(parts, ", ")
}

// shell runs commands against a selected card.
type shell struct {
	c           *client.Client
	out, errOut io.Writer
	interactive bool
}

var errQuit = errors.New("quit")

// run reads and runs lines until the input ends or quit. Interactively,
// errors other than a lost connection are shown and the loop goes on; in
// a script the first one ends it.
func (s *shell) run(ctx context.Context, lines lineReader) error {
	for n := 1; ; n++ {
		line, err := lines.ReadLine()
		if errors.Is(err, io.EOF) {
			if s.interactive {
				fmt.Fprintln(s.out)
			}
			return nil
		}
		if errors.Is(err, bufio.ErrTooLong) {
			return usagef("shell", "line %d: longer than %d bytes", n, maxLine)
		}
		if err != nil {
			return fmt.Errorf("reading input: %w", err)
		}
		err = s.exec(ctx, strings.TrimSpace(line))
		switch {
		case err == nil:
		case errors.Is(err, errQuit):
			return nil
		case !s.interactive:
			var ue *usageError
			if errors.As(err, &ue) {
				return usagef("shell", "line %d: %s", n, ue.msg)
			}
			return fmt.Errorf("line %d: %w", n, err)
		case ctx.Err() != nil || !recoverable(err):
			return err
		default:
			fmt.Fprintf(s.errOut, "error: %v\n", err)
		}
	}
}

// recoverable tells errors after which the connection is still good.
func recoverable(err error) bool {
	var ue *usageError
	var se *client.ServerError
	return errors.As(err, &ue) || errors.As(err, &se)
}

// exec runs one line.
func (s *shell) exec(ctx context.Context, line string) error {
	if line == "" || strings.HasPrefix(line, "#") {
		return nil
	}
	switch strings.ToLower(line) {
	case "quit", "exit":
		return errQuit
	case "help", "?":
		fmt.Fprint(s.out, shellHelp)
		return nil
	case "reset":
		s.echo("reset")
		atr, err := s.c.Reset(ctx)
		if err != nil {
			return err
		}
		printATR(s.out, atr)
		return nil
	}
	cmd, err := parseAPDU(line)
	if err != nil {
		return &usageError{cmd: "shell", msg: fmt.Sprintf("%v (type help for the commands)", err)}
	}
	s.echo(fmt.Sprintf("%x", cmd))
	resp, sw, err := s.c.Transmit(ctx, cmd)
	if err != nil {
		return err
	}
	printResponse(s.out, resp, sw)
	return nil
}

// echo shows a script's command before its result; at a terminal the
// command is on screen already.
func (s *shell) echo(what string) {
	if !s.interactive {
		fmt.Fprintf(s.out, "> %s\n", what)
	}
}
