package main

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/wsrc-go/wsrc/agent"
	"github.com/wsrc-go/wsrc/agent/ccidbackend"
	"github.com/wsrc-go/wsrc/agent/pcscbackend"
	"github.com/wsrc-go/wsrc/agent/simbackend"
	"github.com/wsrc-go/wsrc/card/sim"
	"github.com/wsrc-go/wsrc/ccid"
	"github.com/wsrc-go/wsrc/pcsc"
)

// backendFactory builds one backend from the command line.
type backendFactory func(o *options) (agent.Backend, error)

// factories lists every backend name --backend accepts, but auto.
var factories = map[string]backendFactory{
	"sim":  newSimBackend,
	"pcsc": newPCSCBackend,
	"ccid": newCCIDBackend,
}

// autoBackends is what --backend auto stands for: both hardware backends
// at once. A USB reader is claimed by whichever of the agent's ccid
// backend and pcscd takes it first; the ccid backend skips the readers
// pcscd holds ("interface claimed by pcscd"), and the pcsc backend serves
// those.
var autoBackends = []string{"ccid", "pcsc"}

// knownBackends is the list shown in errors.
const knownBackends = "sim, pcsc, ccid, auto"

// backendErr is a bad backend setting: which flag (its file key and
// environment variable follow from it), which element of a list (-1 for
// none), and what is wrong. options.errorf turns it into an error that
// points where the setting was made.
type backendErr struct {
	flag  string
	index int
	msg   string
}

func (e *backendErr) Error() string { return "--" + e.flag + ": " + e.msg }

func badf(flag string, index int, format string, args ...any) error {
	return &backendErr{flag: flag, index: index, msg: fmt.Sprintf(format, args...)}
}

// backends resolves --backend and --sim into the backends to run. They
// are built but not started.
func (o *options) backends() ([]agent.Backend, error) {
	var names []string
	for n := range strings.SplitSeq(o.backend, ",") {
		if n = strings.ToLower(strings.TrimSpace(n)); n != "" {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		names = []string{"auto"}
		if o.simSet {
			names = []string{"sim"}
		}
	} else if o.simSet && !slices.Contains(names, "sim") {
		names = append(names, "sim")
	}
	seen := map[string]bool{}
	var expanded []string
	for _, n := range names {
		if seen[n] {
			return nil, badf("backend", -1, "backend %q given twice", n)
		}
		seen[n] = true
		if n == "auto" {
			expanded = append(expanded, autoBackends...)
			continue
		}
		if _, ok := factories[n]; !ok {
			return nil, badf("backend", -1, "unknown backend %q (known: %s)", n, knownBackends)
		}
		expanded = append(expanded, n)
	}
	hardware := slices.Contains(expanded, "pcsc") || slices.Contains(expanded, "ccid")
	for _, l := range []struct {
		flag string
		pats []string
	}{{"reader-include", o.readerInclude}, {"reader-exclude", o.readerExclude}} {
		if len(l.pats) > 0 && !hardware {
			return nil, badf(l.flag, -1, "reader patterns apply to the pcsc and ccid backends, which backend %q does not use", o.backend)
		}
		for i, p := range l.pats {
			if p == "" {
				return nil, badf(l.flag, i, "empty pattern")
			}
			if err := (pcsc.Filter{Include: []string{p}}).Validate(); err != nil {
				if inner := errors.Unwrap(err); inner != nil {
					err = inner // without "reader include pattern: "
				}
				return nil, badf(l.flag, i, "bad pattern %v", err)
			}
		}
	}
	if o.pcscShared && !slices.Contains(expanded, "pcsc") {
		return nil, badf("pcsc-shared", -1, "applies to the pcsc backend, which backend %q does not use", o.backend)
	}
	var out []agent.Backend
	built := map[string]bool{}
	for _, n := range expanded {
		if built[n] {
			closeBackends(out, o.logger())
			return nil, badf("backend", -1, "backend %q given twice (auto includes %s)", n, strings.Join(autoBackends, ", "))
		}
		built[n] = true
		b, err := factories[n](o)
		if err != nil {
			closeBackends(out, o.logger())
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}

func newSimBackend(o *options) (agent.Backend, error) {
	n := o.sim
	if !o.simSet {
		n = 1 // --backend sim alone: one card
	}
	if n < 0 {
		return nil, badf("sim", -1, "%d: the number of cards cannot be negative", n)
	}
	var p sim.Protocol
	switch strings.ToLower(strings.ReplaceAll(o.simProtocol, "=", "")) {
	case "t0":
		p = sim.T0
	case "t1":
		p = sim.T1
	default:
		return nil, badf("sim-protocol", -1, "%q: want t0 or t1", o.simProtocol)
	}
	if n > simbackend.MaxCards {
		return nil, badf("sim", -1, "%d: at most %d simulated cards", n, simbackend.MaxCards)
	}
	b, err := simbackend.New(simbackend.Config{N: n, Protocol: p, T0GetResponse: o.simGetResponse})
	if err != nil {
		return nil, badf("sim", -1, "%v", err)
	}
	return b, nil
}

// readerFilter is --reader-include and --reader-exclude. Both hardware
// backends select readers with it: pcsc by PC/SC reader name, ccid by its
// own reader name (product and USB port), with the same pattern rules.
func (o *options) readerFilter() pcsc.Filter {
	return pcsc.Filter{Include: o.readerInclude, Exclude: o.readerExclude}
}

func newPCSCBackend(o *options) (agent.Backend, error) {
	return pcscbackend.New(pcscbackend.Config{
		Filter: o.readerFilter(), // validated by backends
		Open:   pcsc.OpenOptions{Shared: o.pcscShared},
		Logger: o.logger(),
	})
}

// ccidTestOptions, set by tests only, adjusts the CCID driver's options
// (a simulated USB bus instead of this machine's).
var ccidTestOptions func(*ccid.Options)

func newCCIDBackend(o *options) (agent.Backend, error) {
	opts := ccid.Options{Logger: o.logger()}
	if f := o.readerFilter(); len(f.Include)+len(f.Exclude) > 0 {
		opts.ReaderFilter = f.Why
	}
	if ccidTestOptions != nil {
		ccidTestOptions(&opts)
	}
	return ccidbackend.New(ccidbackend.Config{Options: opts}), nil
}
