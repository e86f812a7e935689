// Package vmscript is the small language between a QEMU test and the guest
// init (package main in ../vminit): the test writes a script of steps into
// the VM's initramfs, the init runs it and reports on the serial console
// with marker lines, which the test reads back.
//
//	test ──Script (initramfs /vmscript)──► vminit ──Event lines (console)──► test
//
// A script is one step per line; words are separated by blanks, a word in
// double quotes is a Go string literal, '#' starts a comment line:
//
//	modules xhci-pci                       load modules, dependencies first
//	env WSRC_SERVER=ws://127.0.0.1:8001/   set a variable for later steps
//	wait-usb 2 0b 30s                      wait for 2 USB interfaces of class 0x0b
//	wait-tcp 127.0.0.1:8001 10s            wait until a TCP connect succeeds
//	start server wsrc-server --flag ...    start a background process
//	run list wsrc list                     run a command to its end
//	until list 20s match "8949.*" wsrc list    rerun until the output matches
//	until gone 20s nomatch "8949" wsrc list    ... or no longer matches
//	mark removal                           tell the test something
//	signal gadget USR1                     send a background process a signal
//	stop server                            SIGTERM a background process, wait
//
// Every output line of a process becomes "@@vm out NAME LINE"; a finished
// run prints "@@vm exit NAME CODE", an until its last attempt's output and
// exit; "@@vm fail LINE MESSAGE" aborts the script (a failed until, a
// command that cannot start); "@@vm done" ends it.
package vmscript

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Op is a step's verb.
type Op string

// The steps.
const (
	OpModules Op = "modules"
	OpEnv     Op = "env"
	OpWaitUSB Op = "wait-usb"
	OpWaitTCP Op = "wait-tcp"
	OpStart   Op = "start"
	OpRun     Op = "run"
	OpUntil   Op = "until"
	OpMark    Op = "mark"
	OpStop    Op = "stop"
	OpSignal  Op = "signal"
)

// Signals are the signals a signal step may send, by name.
var Signals = []string{"HUP", "INT", "USR1", "USR2"}

// Step is one parsed line. Only the fields of its Op are set.
type Step struct {
	Line    int           // 1-based line number in the script
	Op      Op            //
	Name    string        // start, run, until, stop: the process name
	Argv    []string      // start, run, until: the command; modules: names
	Env     string        // env: KEY=VALUE
	Count   int           // wait-usb: how many interfaces
	Class   byte          // wait-usb: bInterfaceClass
	Addr    string        // wait-tcp: host:port
	Timeout time.Duration // wait-usb, wait-tcp, until
	Match   bool          // until: true = until the output matches Pattern
	Pattern *regexp.Regexp
	Text    string // mark
	Signal  string // signal: one of Signals
}

// ErrSyntax wraps every parse error.
var ErrSyntax = errors.New("vmscript: syntax error")

// MaxScript bounds the script size Parse accepts.
const MaxScript = 1 << 20

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

// Parse reads a script.
func Parse(src string) ([]Step, error) {
	if len(src) > MaxScript {
		return nil, fmt.Errorf("%w: script of %d bytes", ErrSyntax, len(src))
	}
	var steps []Step
	for i, line := range strings.Split(src, "\n") {
		words, err := split(line)
		if err != nil {
			return nil, fmt.Errorf("%w: line %d: %v", ErrSyntax, i+1, err)
		}
		if len(words) == 0 {
			continue
		}
		st, err := parseStep(Op(words[0]), words[1:])
		if err != nil {
			return nil, fmt.Errorf("%w: line %d: %s: %v", ErrSyntax, i+1, words[0], err)
		}
		st.Line = i + 1
		steps = append(steps, st)
	}
	return steps, nil
}

func parseStep(op Op, args []string) (Step, error) {
	st := Step{Op: op}
	need := func(n int) error {
		if len(args) < n {
			return fmt.Errorf("needs at least %d arguments, has %d", n, len(args))
		}
		return nil
	}
	name := func() error {
		if !nameRE.MatchString(args[0]) {
			return fmt.Errorf("bad process name %q", args[0])
		}
		st.Name = args[0]
		return nil
	}
	var err error
	switch op {
	case OpModules:
		if err = need(1); err == nil {
			st.Argv = args
		}
	case OpEnv:
		if len(args) != 1 || !strings.Contains(args[0], "=") || strings.HasPrefix(args[0], "=") {
			return st, errors.New("want one KEY=VALUE")
		}
		st.Env = args[0]
	case OpWaitUSB:
		if len(args) != 3 {
			return st, errors.New("want COUNT CLASS TIMEOUT")
		}
		if st.Count, err = strconv.Atoi(args[0]); err != nil || st.Count < 1 {
			return st, fmt.Errorf("bad count %q", args[0])
		}
		c, perr := strconv.ParseUint(args[1], 16, 8)
		if perr != nil {
			return st, fmt.Errorf("bad class %q", args[1])
		}
		st.Class = byte(c)
		st.Timeout, err = duration(args[2])
	case OpWaitTCP:
		if len(args) != 2 {
			return st, errors.New("want HOST:PORT TIMEOUT")
		}
		st.Addr = args[0]
		st.Timeout, err = duration(args[1])
	case OpStart, OpRun:
		if err = need(2); err == nil {
			err = name()
			st.Argv = args[1:]
		}
	case OpUntil:
		if err = need(5); err != nil {
			return st, err
		}
		if err = name(); err != nil {
			return st, err
		}
		if st.Timeout, err = duration(args[1]); err != nil {
			return st, err
		}
		switch args[2] {
		case "match":
			st.Match = true
		case "nomatch":
		default:
			return st, fmt.Errorf("want match or nomatch, got %q", args[2])
		}
		if st.Pattern, err = regexp.Compile(args[3]); err != nil {
			return st, err
		}
		st.Argv = args[4:]
	case OpMark:
		if len(args) != 1 {
			return st, errors.New("want one word (quote it)")
		}
		st.Text = args[0]
	case OpSignal:
		if len(args) != 2 || !slices.Contains(Signals, args[1]) {
			return st, fmt.Errorf("want NAME SIGNAL (one of %v)", Signals)
		}
		st.Signal = args[1]
		err = name()
	case OpStop:
		if len(args) != 1 {
			return st, errors.New("want NAME")
		}
		err = name()
	default:
		return st, errors.New("unknown step")
	}
	return st, err
}

func duration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("bad duration %q", s)
	}
	return d, nil
}

// split breaks a line into words; see the package doc.
func split(line string) ([]string, error) {
	var words []string
	s := strings.TrimSpace(line)
	if strings.HasPrefix(s, "#") {
		return nil, nil
	}
	for s != "" {
		if s[0] == '"' {
			q, err := strconv.QuotedPrefix(s)
			if err != nil {
				return nil, fmt.Errorf("bad quoted word at %.20q", s)
			}
			w, _ := strconv.Unquote(q) // QuotedPrefix checked it
			words = append(words, w)
			s = s[len(q):]
			if s != "" && s[0] != ' ' && s[0] != '\t' {
				return nil, fmt.Errorf("no blank after quoted word %s", q)
			}
		} else {
			end := strings.IndexAny(s, " \t")
			if end < 0 {
				end = len(s)
			}
			words = append(words, s[:end])
			s = s[end:]
		}
		s = strings.TrimLeft(s, " \t")
	}
	return words, nil
}

// quote returns w as one script word.
func quote(w string) string {
	if w == "" || w[0] == '"' || w[0] == '#' {
		return strconv.Quote(w)
	}
	for _, r := range w {
		if r < 0x21 || r > 0x7e {
			return strconv.Quote(w)
		}
	}
	return w
}
