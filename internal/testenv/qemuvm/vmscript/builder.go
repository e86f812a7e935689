package vmscript

import (
	"fmt"
	"strings"
	"time"
)

// Builder writes a script; each method adds one step. Arguments are quoted
// as needed, so any string survives the round trip through Parse.
type Builder struct {
	b strings.Builder
}

func (s *Builder) line(words ...string) *Builder {
	for i, w := range words {
		if i > 0 {
			s.b.WriteByte(' ')
		}
		if i == 0 {
			s.b.WriteString(w)
		} else {
			s.b.WriteString(quote(w))
		}
	}
	s.b.WriteByte('\n')
	return s
}

// Modules loads kernel modules and their dependencies.
func (s *Builder) Modules(names ...string) *Builder {
	return s.line(append([]string{string(OpModules)}, names...)...)
}

// Env sets an environment variable for the steps after it.
func (s *Builder) Env(key, value string) *Builder {
	return s.line(string(OpEnv), key+"="+value)
}

// WaitUSB waits until count USB interfaces of class exist.
func (s *Builder) WaitUSB(count int, class byte, timeout time.Duration) *Builder {
	return s.line(string(OpWaitUSB), fmt.Sprint(count), fmt.Sprintf("%02x", class), timeout.String())
}

// WaitTCP waits until a TCP connection to addr succeeds.
func (s *Builder) WaitTCP(addr string, timeout time.Duration) *Builder {
	return s.line(string(OpWaitTCP), addr, timeout.String())
}

// Start starts argv in the background as name.
func (s *Builder) Start(name string, argv ...string) *Builder {
	return s.line(append([]string{string(OpStart), name}, argv...)...)
}

// Run runs argv to its end as name.
func (s *Builder) Run(name string, argv ...string) *Builder {
	return s.line(append([]string{string(OpRun), name}, argv...)...)
}

// Until reruns argv until its output matches pattern (or, with match
// false, no longer does), for at most timeout.
func (s *Builder) Until(name string, timeout time.Duration, match bool, pattern string, argv ...string) *Builder {
	m := "nomatch"
	if match {
		m = "match"
	}
	return s.line(append([]string{string(OpUntil), name, timeout.String(), m, pattern}, argv...)...)
}

// Mark prints a marker the test can wait for.
func (s *Builder) Mark(text string) *Builder { return s.line(string(OpMark), text) }

// Signal sends the background process name a signal, one of Signals
// (e.g. "USR1"); it does not wait for anything.
func (s *Builder) Signal(name, sig string) *Builder {
	return s.line(string(OpSignal), name, sig)
}

// Stop stops the background process name.
func (s *Builder) Stop(name string) *Builder { return s.line(string(OpStop), name) }

// String returns the script text.
func (s *Builder) String() string { return s.b.String() }
