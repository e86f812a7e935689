// Package vpcdbridge makes a remote card a local PC/SC card: a Bridge
// selects one card on a WSRC server (package client) and puts it into a
// reader slot of vsmartcard's vpcd (package internal/vpcd), so that every
// PC/SC application on this machine (pcsc_scan, scriptor, OpenSC, lpac,
// pySim's -p N transport, ...) sees it as a card in a local reader. It is
// the engine of `wsrc vpcd`.
//
// Data flow:
//
//	PC/SC app ── libpcsclite ── pcscd ── vpcd driver ◄──TCP── Bridge ──ws──► server ──► agent ──► card
//
// vpcd's requests map onto the user side of WSRC: an APDU is a c_apdu,
// vpcd's reset is a reset_req, power on after a power off (pcscd powers an
// idle card off after a few seconds and on again for the next
// application) is a reset_req too, and so is the first power on after
// insertion, so that an application always finds the card freshly reset,
// as in a local reader. vpcd's ATR requests (one per presence poll) are
// answered from the ATR the server reported, without network traffic.
//
// # Holding the card
//
// The bridge holds the remote card for as long as it runs, not only while
// an application has it powered. PC/SC applications connect and
// disconnect all the time (pcsc_scan, and lpac or pySim run as several
// processes for one job), and pcscd powers an idle card off after a few
// seconds; releasing the card at each power off would let another user
// take it in the middle of a job, and the reader would then show a card
// that cannot be powered. Held, the card behaves like a card in a local
// reader: it is this machine's until the bridge stops. To share a card
// between people, stop the bridge (`systemctl stop wsrc-vpcd@NAME`); the
// server frees the card at once.
//
// # Sharing
//
// With Config.Share (`wsrc vpcd --share`) the bridge holds the card only
// while pcscd has it powered: pcscd powers a card on when an application
// connects (and briefly at insertion, to read the ATR) and off right after
// the last application disconnects (pcsc-lite 1.9). The card is in the
// reader while the server lists it as free (checked every CheckInterval,
// on a connection of its own that never selects); a power on selects and
// resets it, a power off releases it (by closing that session's
// connection: the protocol has no other way). So a team shares the card
// between PC/SC sessions, at the price the hold mode avoids: another user
// may take it between two of them, and it then leaves this reader until
// it is free again; a power on that loses that race fails (the card is
// removed).
//
// # Presence and reconnection
//
// While the card is held, it is inserted in the vpcd slot (a TCP
// connection to vpcd is a present card). The card leaves the slot — PC/SC
// applications see a removed card — when the server connection ends
// (server restart, network cut), when an exchange with the card fails
// (agent gone, card pulled), or when a periodic check of the server's
// card list (Config.CheckInterval; the protocol has no event for it)
// finds the card no longer held by this connection. The bridge then
// connects and selects again with backoff, forever, and inserts the card
// again when it is back. A card that cannot be selected (not connected,
// not allowed for this account, in use by another user) leaves the slot
// empty, and the reason is logged (once per change) and reported to
// Config.OnEvent.
//
// # Ownership
//
// Run's goroutine owns the connection to the server and the slot. While a
// card is held, one helper goroutine (owned by Run, ended before the card
// is released) watches the server connection and the card list. With
// Share, Run's goroutine owns the watcher connection and the slot, and the
// one goroutine serving the slot (started and waited for by Run) owns the
// selecting connection.
package vpcdbridge

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/client"
	"github.com/wsrc-go/wsrc/internal/vpcd"
	"github.com/wsrc-go/wsrc/protocol"
)

// DefaultVPCD is the address of vpcd's first slot (reader 0) on this
// machine; slot i listens on port 35963+i.
const DefaultVPCD = "127.0.0.1:35963"

// maxVPCDBackoff bounds the wait between attempts to reach vpcd.
const maxVPCDBackoff = time.Second

// vpcdSilence is how long vpcd may stay silent after accepting the
// connection before the bridge concludes that another card holds the slot
// (vpcd asks for the ATR about every 400 ms). A variable for tests.
var vpcdSilence = 5 * time.Second

// Defaults for the zero Config fields.
const (
	DefaultCheckInterval = 5 * time.Second
	DefaultMinBackoff    = 500 * time.Millisecond
	// DefaultMaxBackoff is the agents' cap too: after a long outage the
	// card is back within about 10 s of the server's return.
	DefaultMaxBackoff = 8 * time.Second
)

// Config describes a bridge.
type Config struct {
	// Server is the WSRC server's user port URL (credentials as
	// user:password@ in it, or in ClientOptions).
	Server string
	// IDType and IDStr select the card, as select_card does (iccid, eid,
	// atr, imsi, ...).
	IDType, IDStr string
	// VPCD is vpcd's host:port for the slot; "" means DefaultVPCD.
	VPCD string
	// ClientOptions are passed to client.Dial (TLS, credentials, timeouts).
	ClientOptions []client.Option
	// Logger receives state changes; nil means slog.Default().
	Logger *slog.Logger
	// CheckInterval is how often the bridge asks the server whether the
	// held card is still there while no application uses it; zero means
	// DefaultCheckInterval.
	CheckInterval time.Duration
	// MinBackoff and MaxBackoff bound the wait between attempts to reach
	// the server, select the card or reach vpcd (doubling, with jitter).
	MinBackoff, MaxBackoff time.Duration
	// OnEvent, if set, is called on Run's goroutines at every state
	// change (tests wait on it); it must not block for long.
	OnEvent func(Event)
	// Share holds the card only while pcscd has it powered (see "Sharing"
	// in the package doc) instead of for the bridge's lifetime.
	Share bool
}

// EventKind says what changed.
type EventKind int

const (
	// Waiting: no card is held; Err says why (cannot connect, card not
	// available, ...). Reported when the reason changes.
	Waiting EventKind = iota
	// Selected: the card is held; Identities are the server's.
	Selected
	// Inserted: the card is in the vpcd slot (connected to vpcd).
	Inserted
	// Removed: the card left the vpcd slot; Err says why (nil when the
	// bridge stops).
	Removed
	// Released: the card is no longer held; Err says why.
	Released
)

func (k EventKind) String() string {
	switch k {
	case Waiting:
		return "waiting"
	case Selected:
		return "selected"
	case Inserted:
		return "inserted"
	case Removed:
		return "removed"
	case Released:
		return "released"
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// Event is one state change of a bridge.
type Event struct {
	Kind       EventKind
	Identities protocol.Identities // Selected
	Err        error
}

// Bridge is one remote card in one vpcd slot. Create it with New and run
// it with Run.
type Bridge struct {
	cfg Config // immutable after New
	log *slog.Logger
}

// New checks cfg and returns a bridge.
func New(cfg Config) (*Bridge, error) {
	if cfg.Server == "" {
		return nil, errors.New("vpcd bridge: no server URL")
	}
	if strings.TrimSpace(cfg.IDType) == "" || strings.TrimSpace(cfg.IDStr) == "" {
		return nil, errors.New("vpcd bridge: no card selection (identity type and value)")
	}
	if cfg.VPCD == "" {
		cfg.VPCD = DefaultVPCD
	}
	if cfg.CheckInterval <= 0 {
		cfg.CheckInterval = DefaultCheckInterval
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(cfg.MinBackoff, DefaultMaxBackoff)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("card", cfg.IDType+"="+cfg.IDStr, "vpcd", cfg.VPCD)
	return &Bridge{cfg: cfg, log: log}, nil
}

func (b *Bridge) event(ev Event) {
	if b.cfg.OnEvent != nil {
		b.cfg.OnEvent(ev)
	}
}

// Run keeps the card in the vpcd slot until ctx is done, reconnecting
// forever (see the package doc). It returns nil when ctx is done.
func (b *Bridge) Run(ctx context.Context) error {
	if b.cfg.Share {
		return b.runShared(ctx)
	}
	bo := b.newBackoff()
	var lastWait string
	for ctx.Err() == nil {
		c, ids, err := b.acquire(ctx)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			if msg := err.Error(); msg != lastWait {
				b.log.Warn("vpcd bridge: card not available, the reader stays empty; retrying", "err", err)
				lastWait = msg
				b.event(Event{Kind: Waiting, Err: err})
			} else {
				b.log.Debug("vpcd bridge: card still not available", "err", err)
			}
			bo.wait(ctx)
			continue
		}
		lastWait = ""
		bo.reset()
		b.log.Info("vpcd bridge: card selected", "identities", ids)
		b.event(Event{Kind: Selected, Identities: ids})
		why := b.hold(ctx, c, ids)
		c.Close()
		if ctx.Err() != nil {
			b.event(Event{Kind: Released})
			break
		}
		b.log.Warn("vpcd bridge: card lost; selecting it again", "err", why)
		b.event(Event{Kind: Released, Err: why})
		bo.wait(ctx)
	}
	return nil
}

// hint adds what a server's refusal to select usually means.
func hint(err error) error {
	var se *client.ServerError
	if !errors.As(err, &se) {
		return err
	}
	switch {
	case strings.Contains(se.Message, "in use by another user"):
		return fmt.Errorf("%w (the bridge takes it when it is free)", err)
	case strings.HasPrefix(se.Message, "no card with") && !strings.Contains(se.Message, "being identified"):
		return fmt.Errorf("%w (the card is not connected to the server, or this account may not use it)", err)
	}
	return err
}

// acquire connects and selects the card.
func (b *Bridge) acquire(ctx context.Context) (*client.Client, protocol.Identities, error) {
	c, err := client.Dial(ctx, b.cfg.Server, b.cfg.ClientOptions...)
	if err != nil {
		return nil, nil, err
	}
	ids, err := c.Select(ctx, b.cfg.IDType, b.cfg.IDStr)
	if err != nil {
		c.Close()
		return nil, nil, hint(err)
	}
	return c, ids, nil
}

// hold keeps the selected card in the vpcd slot until the card or the
// server is lost (the returned error says which) or ctx is done.
func (b *Bridge) hold(ctx context.Context, c *client.Client, ids protocol.Identities) error {
	atr, err := hex.DecodeString(ids[protocol.IdentityATR])
	if err != nil || len(atr) == 0 {
		return fmt.Errorf("the server reported no valid ATR for the card (%q)", ids[protocol.IdentityATR])
	}
	hctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	l := &remote{c: c, atr: atr}
	watched := make(chan struct{})
	go func() { // owned by hold; exits when hctx is done
		defer close(watched)
		b.watch(hctx, cancel, c, ids, l)
	}()
	defer func() { cancel(nil); <-watched }()

	// vpcd is on this machine, and with pcscd's --auto-exit (Debian's
	// default) it only listens while an application has started pcscd:
	// try often, so that the card is there soon after.
	bo := b.newBackoff()
	bo.max = min(bo.max, maxVPCDBackoff)
	warned, warnedSilent := false, false
	for hctx.Err() == nil {
		conn, err := vpcd.Dial(hctx, b.cfg.VPCD)
		if err != nil {
			if hctx.Err() != nil {
				break
			}
			if !warned {
				b.log.Warn("vpcd bridge: cannot reach vpcd (is pcscd with vsmartcard-vpcd running?); retrying", "err", err)
				b.event(Event{Kind: Waiting, Err: err})
				warned = true
			}
			bo.wait(hctx)
			continue
		}
		warned = false
		b.log.Info("vpcd bridge: card inserted")
		b.event(Event{Kind: Inserted})
		err = vpcd.ServeLink(hctx, conn, l, vpcd.LinkOptions{ResetAtPowerOn: true, FirstMessageTimeout: vpcdSilence})
		switch {
		case errors.Is(err, vpcd.ErrSilent) && hctx.Err() == nil:
			// Another card is in the slot (another wsrc vpcd on this
			// port?): vpcd does not serve this connection.
			if !warnedSilent {
				b.log.Warn("vpcd bridge: vpcd does not serve this port; is another card (another wsrc vpcd) using it? retrying", "err", err)
				warnedSilent = true
			}
			b.event(Event{Kind: Waiting, Err: err})
			bo.wait(hctx)
			continue
		case err != nil && l.failed():
			// The remote card failed: removal, then select again.
			cancel(err)
		case hctx.Err() == nil:
			// vpcd closed the connection (pcscd stopped or restarted):
			// the card is still held; insert it again.
			b.log.Info("vpcd bridge: vpcd closed the connection; inserting the card again", "err", err)
			b.event(Event{Kind: Removed, Err: fmt.Errorf("vpcd closed the connection: %v", err)})
			bo.reset()
			warnedSilent = false
			continue
		}
		why := context.Cause(hctx)
		if ctx.Err() != nil {
			why = nil
		}
		b.log.Info("vpcd bridge: card removed from the reader", "err", why)
		b.event(Event{Kind: Removed, Err: why})
	}
	if ctx.Err() != nil {
		return nil
	}
	return context.Cause(hctx)
}

// watch ends the hold (cancel with the reason) when the server connection
// ends or the server no longer lists the card as held.
func (b *Bridge) watch(ctx context.Context, cancel context.CancelCauseFunc, c *client.Client, ids protocol.Identities, l *remote) {
	t := time.NewTicker(b.cfg.CheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.Done():
			cancel(fmt.Errorf("connection to the server ended: %w", c.Err()))
			return
		case <-t.C:
			if err := b.check(ctx, c, ids, l); err != nil {
				cancel(err)
				return
			}
		}
	}
}

// check asks the server whether the card is still listed as associated.
// (If it left and came back, it is listed as ready: its new connection
// is not ours. If another user took it meanwhile, the next exchange
// fails instead.)
func (b *Bridge) check(ctx context.Context, c *client.Client, ids protocol.Identities, l *remote) error {
	key, val := matchKey(ids, l.currentATR())
	// Only the cards with this identity (wsrc-server filters; a pySim
	// server sends all and the client filters).
	cards, _, err := c.ListCardsWhere(ctx, protocol.ListCards{IDType: key, IDStr: val})
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("checking the card: %w", err)
	}
	for _, ci := range cards {
		v := ci.Identities[key]
		if v == "" || normalize(key, v) != normalize(key, val) {
			continue
		}
		if ci.State == protocol.StateAssociated {
			return nil
		}
	}
	return fmt.Errorf("the server no longer lists the card %s %s as selected (the card left the server)", key, val)
}

// matchKey picks the identity that names the card most firmly.
func matchKey(ids protocol.Identities, atr []byte) (key, val string) {
	for _, k := range []string{protocol.IdentityICCID, protocol.IdentityEID, protocol.IdentityIMSI} {
		if v := ids[k]; v != "" {
			return k, v
		}
	}
	return protocol.IdentityATR, hex.EncodeToString(atr)
}

func normalize(key, v string) string {
	if key == protocol.IdentityICCID {
		return card.NormalizeICCID(v)
	}
	return strings.ToLower(v)
}

// remote is the held card as vpcd's Link. Transmit and Reset run on the
// goroutine serving vpcd; currentATR also on the watcher.
type remote struct {
	c *client.Client

	mu     sync.Mutex
	atr    []byte // guarded by mu: the ATR of the card's last reset
	broken bool   // guarded by mu: an exchange failed
}

func (r *remote) ATR() []byte { return r.currentATR() }

func (r *remote) currentATR() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.atr
}

func (r *remote) failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.broken
}

func (r *remote) fail(err error) error {
	r.mu.Lock()
	r.broken = true
	r.mu.Unlock()
	return err
}

func (r *remote) Transmit(ctx context.Context, cmd []byte) ([]byte, error) {
	if len(cmd) < 4 || len(cmd) > client.MaxCommandLen {
		return []byte{0x67, 0x00}, nil // not an APDU: wrong length
	}
	resp, sw, err := r.c.Transmit(ctx, cmd)
	if err != nil {
		return nil, r.fail(fmt.Errorf("remote card: %w", err))
	}
	return append(resp, byte(sw>>8), byte(sw)), nil
}

func (r *remote) Reset(ctx context.Context, _ card.ResetKind) ([]byte, error) {
	atr, err := r.c.Reset(ctx)
	if err != nil {
		return nil, r.fail(fmt.Errorf("remote card reset: %w", err))
	}
	if len(atr) > 0 { // a pySim server does not pass the new ATR on
		r.mu.Lock()
		r.atr = atr
		r.mu.Unlock()
	}
	return r.currentATR(), nil
}

// backoff is a doubling wait with jitter.
type backoff struct {
	min, max, cur time.Duration
}

func (b *Bridge) newBackoff() *backoff {
	return &backoff{min: b.cfg.MinBackoff, max: b.cfg.MaxBackoff, cur: b.cfg.MinBackoff}
}

func (bo *backoff) reset() { bo.cur = bo.min }

// wait sleeps for the current interval (half of it plus jitter), or until
// ctx is done, and doubles the interval.
func (bo *backoff) wait(ctx context.Context) {
	t := time.NewTimer(bo.cur/2 + rand.N(bo.cur/2+1))
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
	bo.cur = min(2*bo.cur, bo.max)
}
