package main

import (
	"fmt"
	"slices"
	"strings"

	"github.com/wsrc-go/wsrc/agent"
	"github.com/wsrc-go/wsrc/agent/simbackend"
	"github.com/wsrc-go/wsrc/card/sim"
)

// backendFactory builds one backend from the command line.
type backendFactory func(o *options) (agent.Backend, error)

// factories lists every backend name --backend accepts. The hardware
// backends take their place here when their packages (pcsc/, ccid/) are
// wired in; until then they fail with a clear message.
var factories = map[string]backendFactory{
	"sim":  newSimBackend,
	"pcsc": notBuilt("pcsc", "PC/SC"),
	"ccid": notBuilt("ccid", "USB CCID"),
	"auto": func(*options) (agent.Backend, error) {
		return nil, usagef("backend \"auto\" picks ccid, then pcsc, and neither is built into this wsrc-agent yet; use --sim N for simulated cards")
	},
}

// knownBackends is the list shown in errors.
const knownBackends = "sim, pcsc, ccid, auto"

func notBuilt(name, what string) backendFactory {
	return func(*options) (agent.Backend, error) {
		return nil, usagef("backend %q (%s readers) is not built into this wsrc-agent yet; use --sim N for simulated cards", name, what)
	}
}

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
	var out []agent.Backend
	seen := map[string]bool{}
	for _, n := range names {
		f, ok := factories[n]
		if !ok {
			return nil, usagef("unknown backend %q (known: %s)", n, knownBackends)
		}
		if seen[n] {
			return nil, usagef("backend %q given twice", n)
		}
		seen[n] = true
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
