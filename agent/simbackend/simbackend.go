// Package simbackend is the agent backend of simulated cards: N readers
// named "Simulated reader <i>", each holding a card/sim card with its own
// identity. It lets the whole chain (agent, server, users) run without
// hardware, in tests and in `make demo`.
//
// Card i is the recorded virtual eUICC of the WSRC transcript with its
// identities shifted by i: ICCID 894944000000115531+i with a Luhn check
// digit (card 0: 8949440000001155314, the recorded one), EID
// 890490321234512345123456789012+i with ISO 7064 MOD 97-10 check digits
// (card 0: 89049032123451234512345678901235), IMSI 001010123456789+i. Card 0
// is exactly the recorded card, which has no USIM; cards 1 and up have a
// USIM whose EF.IMSI needs no PIN, so that identification finds their IMSI
// (`wsrc list` shows it in `make demo`).
//
// Data flow: Backend.Run reports every inserted card to the agent's
// Manager; SlotEvent.Open powers up a fresh sim.Card (a power cycle: file
// changes do not survive removal). Insert and Remove simulate a user
// taking cards in and out.
package simbackend

import (
	"context"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"sync"

	"github.com/wsrc-go/wsrc/agent"
	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/card/sim"
)

// Name is the backend's name in SlotIDs, logs and `wsrc-agent readers`.
const Name = "sim"

// MaxCards bounds Config.N.
const MaxCards = 1000

// Identity bases of card 0 (without check digits).
const (
	iccidBase = "894944000000115531"             // 18 digits, + Luhn digit
	eidBase   = "890490321234512345123456789012" // 30 digits, + 2 MOD 97-10 digits
	imsiBase  = "001010123456789"                // 15 digits
)

// Config describes the simulated cards.
type Config struct {
	// N is the number of simulated readers, each with a card inserted.
	N int
	// Protocol selects the ATR the cards announce (sim.T0 or sim.T1).
	Protocol sim.Protocol
	// T0GetResponse makes the cards answer like real T=0 cards: data only
	// through 61xx + GET RESPONSE, wrong Le with 6Cxx.
	T0GetResponse bool
}

// Backend is the simulated-card backend. It implements agent.Backend.
type Backend struct {
	cfg Config // immutable after New

	mu      sync.Mutex
	present []bool            // guarded by mu: a card is inserted in reader i
	queue   []agent.SlotEvent // guarded by mu: changes not yet sent by Run
	wake    chan struct{}     // cap 1: something was queued
}

var _ agent.Backend = (*Backend)(nil)

// New returns a backend with cfg.N readers, every one with its card
// inserted.
func New(cfg Config) (*Backend, error) {
	if cfg.N < 0 || cfg.N > MaxCards {
		return nil, fmt.Errorf("simulated cards: %d is not between 0 and %d", cfg.N, MaxCards)
	}
	if cfg.Protocol != sim.T0 && cfg.Protocol != sim.T1 {
		return nil, fmt.Errorf("simulated cards: unknown protocol %v", cfg.Protocol)
	}
	b := &Backend{cfg: cfg, present: make([]bool, cfg.N), wake: make(chan struct{}, 1)}
	for i := range b.present {
		b.present[i] = true
	}
	return b, nil
}

// Name returns "sim".
func (b *Backend) Name() string { return Name }

// CardConfig returns the sim.Config of card i.
func (b *Backend) CardConfig(i int) sim.Config {
	return sim.Config{
		ICCID:         ICCID(i),
		EID:           EID(i),
		IMSI:          IMSI(i),
		USIM:          i > 0,
		Protocol:      b.cfg.Protocol,
		T0GetResponse: b.cfg.T0GetResponse,
	}
}

// ReaderName is the name of simulated reader i.
func ReaderName(i int) string { return fmt.Sprintf("Simulated reader %d", i) }

func (b *Backend) slot(i int) agent.SlotID {
	return agent.SlotID{Backend: Name, Reader: ReaderName(i)}
}

// open returns the Open function of card i.
func (b *Backend) open(i int) func(context.Context) (card.Card, error) {
	cfg := b.CardConfig(i)
	return func(ctx context.Context) (card.Card, error) {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("powering up simulated card %d: %w", i, err)
		}
		return sim.New(cfg), nil
	}
}

func (b *Backend) event(i int, present bool) agent.SlotEvent {
	ev := agent.SlotEvent{Slot: b.slot(i), Present: present}
	if present {
		ev.Open = b.open(i)
	}
	return ev
}

// ErrNoReader is returned by Insert and Remove for a reader index out of
// range.
var ErrNoReader = errors.New("no such simulated reader")

// Insert puts card i back into its reader (a no-op if it is there).
func (b *Backend) Insert(i int) error { return b.set(i, true) }

// Remove takes card i out of its reader (a no-op if it is out).
func (b *Backend) Remove(i int) error { return b.set(i, false) }

func (b *Backend) set(i int, present bool) error {
	if i < 0 || i >= b.cfg.N {
		return fmt.Errorf("%w: %d (have %d)", ErrNoReader, i, b.cfg.N)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.present[i] == present {
		return nil
	}
	b.present[i] = present
	b.queue = append(b.queue, b.event(i, present))
	select {
	case b.wake <- struct{}{}:
	default:
	}
	return nil
}

// Run reports the inserted cards, then every Insert and Remove, until ctx
// is done. Only one Run may be active at a time.
func (b *Backend) Run(ctx context.Context, events chan<- agent.SlotEvent) error {
	b.mu.Lock()
	b.queue = b.queue[:0]
	for i, p := range b.present {
		if p {
			b.queue = append(b.queue, b.event(i, true))
		}
	}
	b.mu.Unlock()
	for {
		b.mu.Lock()
		var ev agent.SlotEvent
		pending := len(b.queue) > 0
		if pending {
			ev = b.queue[0]
			b.queue = b.queue[1:]
		}
		b.mu.Unlock()
		if !pending {
			select {
			case <-ctx.Done():
				return nil
			case <-b.wake:
				continue
			}
		}
		select {
		case events <- ev:
		case <-ctx.Done():
			return nil
		}
	}
}

// Probe describes the simulated readers; a backend with no cards is
// skipped.
func (b *Backend) Probe(ctx context.Context) agent.BackendReport {
	r := agent.BackendReport{Backend: Name, Status: agent.StatusLoaded}
	if b.cfg.N == 0 {
		r.Status = agent.StatusSkipped
		r.Reason = "no simulated cards configured (--sim 0)"
		return r
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, p := range b.present {
		s := agent.SlotReport{Index: 0, Present: p}
		if p {
			s.Open = b.open(i)
		}
		details := b.cfg.Protocol.String()
		if b.cfg.T0GetResponse {
			details += ", GET RESPONSE on T=0"
		}
		r.Readers = append(r.Readers, agent.ReaderReport{
			Name:    ReaderName(i),
			Status:  agent.StatusLoaded,
			Details: "simulated UICC, " + details,
			Slots:   []agent.SlotReport{s},
		})
	}
	return r
}

// ICCID returns the ICCID of simulated card i: 894944000000115531+i and a
// Luhn check digit.
func ICCID(i int) string {
	body := addDecimal(iccidBase, i)
	return body + string(rune('0'+luhn(body)))
}

// EID returns the EID of simulated card i: 890490321234512345123456789012+i
// and two check digits making the number ≡ 1 (mod 97), as SGP.29 asks.
func EID(i int) string {
	body := addDecimal(eidBase, i)
	n, _ := new(big.Int).SetString(body+"00", 10)
	check := 98 - new(big.Int).Mod(n, big.NewInt(97)).Int64()
	return fmt.Sprintf("%s%02d", body, check)
}

// IMSI returns the IMSI of simulated card i: 001010123456789+i.
func IMSI(i int) string { return addDecimal(imsiBase, i) }

// addDecimal adds i to the decimal string s, keeping its width (wrapping
// around past all nines).
func addDecimal(s string, i int) string {
	n, _ := new(big.Int).SetString(s, 10)
	n.Add(n, big.NewInt(int64(i)))
	mod := new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(len(s))), nil)
	n.Mod(n, mod)
	out := n.String()
	return strings.Repeat("0", len(s)-len(out)) + out
}

// luhn returns the Luhn check digit for the decimal string s.
func luhn(s string) int {
	sum := 0
	for i := range len(s) {
		d := int(s[len(s)-1-i] - '0')
		if i%2 == 0 {
			d *= 2
			if d > 9 {
				d -= 9
			}
		}
		sum += d
	}
	return (10 - sum%10) % 10
}
