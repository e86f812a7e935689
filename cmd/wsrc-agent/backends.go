package main

import (
	"fmt"
	"slices"
	"strings"

	"github.com/wsrc-go/wsrc/agent"
	"github.com/wsrc-go/wsrc/agent/simbackend"
	"github.com/wsrc-go/wsrc/card/sim"
	"github.com/wsrc-go/wsrc/ccid"
	ccidagent "github.com/wsrc-go/wsrc/ccid/agentbackend"
	"github.com/wsrc-go/wsrc/pcsc"
	pcscagent "github.com/wsrc-go/wsrc/pcsc/agentbackend"
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

// backends resolves --backend and --sim into the backends to run.
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
			return nil, usagef("backend %q given twice", n)
		}
		seen[n] = true
		if n == "auto" {
			expanded = append(expanded, autoBackends...)
			continue
		}
		if _, ok := factories[n]; !ok {
			return nil, usagef("unknown backend %q (known: %s)", n, knownBackends)
		}
		expanded = append(expanded, n)
	}
	hardware := slices.Contains(expanded, "pcsc") || slices.Contains(expanded, "ccid")
	if (len(o.readerInclude) > 0 || len(o.readerExclude) > 0) && !hardware {
		return nil, usagef("--reader-include and --reader-exclude apply to the pcsc and ccid backends, which --backend %q does not use", o.backend)
	}
	if err := o.readerFilter().Validate(); err != nil {
		return nil, usageError{fmt.Sprintf("--reader-include/--reader-exclude: %v", err)}
	}
	if o.pcscShared && !slices.Contains(expanded, "pcsc") {
		return nil, usagef("--pcsc-shared applies to the pcsc backend, which --backend %q does not use", o.backend)
	}
	var out []agent.Backend
	built := map[string]bool{}
	for _, n := range expanded {
		if built[n] {
			return nil, usagef("backend %q given twice (auto includes %s)", n, strings.Join(autoBackends, ", "))
		}
		built[n] = true
		f := factories[n]
		b, err := f(o)
		if err != nil {
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
		return nil, usagef("--sim %d: the number of cards cannot be negative", n)
	}
	var p sim.Protocol
	switch strings.ToLower(strings.ReplaceAll(o.simProtocol, "=", "")) {
	case "t0":
		p = sim.T0
	case "t1":
		p = sim.T1
	default:
		return nil, usagef("--sim-protocol %q: want t0 or t1", o.simProtocol)
	}
	if n > simbackend.MaxCards {
		return nil, usagef("--sim %d: at most %d simulated cards", n, simbackend.MaxCards)
	}
	b, err := simbackend.New(simbackend.Config{N: n, Protocol: p, T0GetResponse: o.simGetResponse})
	if err != nil {
		return nil, usageError{fmt.Sprintf("--sim: %v", err)}
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
	b, err := pcscagent.New(pcscagent.Config{
		Filter: o.readerFilter(),
		Open:   pcsc.OpenOptions{Shared: o.pcscShared},
		Logger: o.log,
	})
	if err != nil {
		return nil, usageError{fmt.Sprintf("--reader-include/--reader-exclude: %v", err)}
	}
	return b, nil
}

// ccidTestOptions, set by tests only, adjusts the CCID driver's options
// (a simulated USB bus instead of this machine's).
var ccidTestOptions func(*ccid.Options)

func newCCIDBackend(o *options) (agent.Backend, error) {
	opts := ccid.Options{Logger: o.log}
	if f := o.readerFilter(); len(f.Include)+len(f.Exclude) > 0 {
		opts.ReaderFilter = f.Why
	}
	if ccidTestOptions != nil {
		ccidTestOptions(&opts)
	}
	return ccidagent.New(ccidagent.Config{Options: opts}), nil
}
