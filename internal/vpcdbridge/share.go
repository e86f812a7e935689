package vpcdbridge

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/client"
	"github.com/wsrc-go/wsrc/internal/vpcd"
	"github.com/wsrc-go/wsrc/protocol"
)

// runShared is Run with Config.Share: a watcher connection to the server
// decides when the card is in the slot; a sharedLink selects it while
// pcscd has it powered (see "Sharing" in the package doc).
func (b *Bridge) runShared(ctx context.Context) error {
	bo := b.newBackoff()
	var lastWait string
	for ctx.Err() == nil {
		w, err := client.Dial(ctx, b.cfg.Server, b.cfg.ClientOptions...)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			if msg := err.Error(); msg != lastWait {
				b.log.Warn("vpcd bridge: cannot reach the server, the reader stays empty; retrying", "err", err)
				lastWait = msg
				b.event(Event{Kind: Waiting, Err: err})
			}
			bo.wait(ctx)
			continue
		}
		lastWait = ""
		bo.reset()
		why := b.share(ctx, w)
		w.Close()
		if ctx.Err() != nil {
			break
		}
		b.log.Warn("vpcd bridge: lost the server; connecting again", "err", why)
		bo.wait(ctx)
	}
	return nil
}

// sharedSlot is the card in the vpcd slot: one ServeLink goroutine.
type sharedSlot struct {
	link   *sharedLink
	cancel context.CancelFunc
	done   chan struct{} // closed when ServeLink has returned
	err    error         // ServeLink's result, set before done closes
}

// share keeps the card in the slot while the server lists it as free or
// held by this bridge, until the watcher connection w ends (its error is
// returned) or ctx is done (nil).
func (b *Bridge) share(ctx context.Context, w *client.Client) error {
	var slot *sharedSlot
	remove := func(why error) {
		if slot == nil {
			return
		}
		slot.cancel()
		<-slot.done
		slot = nil
		b.log.Info("vpcd bridge: card removed from the reader", "err", why)
		b.event(Event{Kind: Removed, Err: why})
	}
	defer func() { remove(nil) }()
	t := time.NewTicker(b.cfg.CheckInterval)
	defer t.Stop()
	var lastWait string
	waiting := func(err error) {
		if msg := err.Error(); msg != lastWait {
			b.log.Warn("vpcd bridge: card not available, the reader stays empty", "err", err)
			lastWait = msg
			b.event(Event{Kind: Waiting, Err: err})
		}
	}
	for {
		if slot != nil {
			select {
			case <-slot.done:
				err := slot.err
				if err == nil {
					err = errors.New("vpcd closed the connection")
				}
				remove(err)
			default:
			}
		}
		ci, avail, err := b.lookup(ctx, w, slot)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			return err
		case avail && slot == nil:
			conn, err := vpcd.Dial(ctx, b.cfg.VPCD)
			if err != nil {
				waiting(fmt.Errorf("cannot reach vpcd (is pcscd with vsmartcard-vpcd running?): %w", err))
				break
			}
			lastWait = ""
			slot = b.insertShared(conn, ci)
		case !avail && slot != nil:
			remove(fmt.Errorf("%s", b.unavailable(ci)))
		case !avail:
			waiting(errors.New(b.unavailable(ci)))
		}
		var done chan struct{}
		if slot != nil {
			done = slot.done
		}
		select {
		case <-ctx.Done():
			return nil
		case <-w.Done():
			return fmt.Errorf("connection to the server ended: %w", w.Err())
		case <-done:
		case <-t.C:
		}
	}
}

// lookup finds the card on the server: avail when it is free, or held
// through slot's session.
func (b *Bridge) lookup(ctx context.Context, w *client.Client, slot *sharedSlot) (protocol.CardInfo, bool, error) {
	cards, _, err := w.ListCardsWhere(ctx, protocol.ListCards{IDType: b.cfg.IDType, IDStr: b.cfg.IDStr})
	if err != nil {
		return protocol.CardInfo{}, false, fmt.Errorf("checking the card: %w", err)
	}
	held := slot != nil && slot.link.held.Load()
	for _, ci := range cards {
		if ci.State == protocol.StateReady || (held && ci.State == protocol.StateAssociated) {
			return ci, true, nil
		}
	}
	if len(cards) > 0 {
		return cards[0], false, nil
	}
	return protocol.CardInfo{}, false, nil
}

// unavailable says why the card described by ci (zero: not listed) is not
// in the reader.
func (b *Bridge) unavailable(ci protocol.CardInfo) string {
	sel := b.cfg.IDType + " " + b.cfg.IDStr
	switch ci.State {
	case "":
		return "no card with " + sel + " is listed (not connected to the server, or this account may not use it)"
	case protocol.StateAssociated:
		return "card " + sel + " is in use by another user (it comes back when it is free)"
	default:
		return "card " + sel + " is still being identified"
	}
}

func (b *Bridge) insertShared(conn net.Conn, ci protocol.CardInfo) *sharedSlot {
	atr, _ := hex.DecodeString(ci.Identities[protocol.IdentityATR])
	l := &sharedLink{b: b, atr: atr}
	sctx, cancel := context.WithCancel(context.Background())
	slot := &sharedSlot{link: l, cancel: cancel, done: make(chan struct{})}
	b.log.Info("vpcd bridge: card inserted (shared: selected only while powered)", "identities", ci.Identities)
	b.event(Event{Kind: Inserted, Identities: ci.Identities})
	go func() { // owned by share, which waits for done
		defer close(slot.done)
		slot.err = vpcd.ServeLink(sctx, conn, l, vpcd.LinkOptions{ResetAtPowerOn: true, FirstMessageTimeout: vpcdSilence})
		l.release()
	}()
	return slot
}

// sharedLink is the card as vpcd's Link in share mode. Its methods run on
// the ServeLink goroutine, which owns sess; held is also read by share.
type sharedLink struct {
	b    *Bridge
	sess *client.Client // the selecting connection while powered, else nil
	// held is set while the card is selected (or being selected) through
	// sess.
	held atomic.Bool

	mu  sync.Mutex
	atr []byte // guarded by mu
}

func (l *sharedLink) ATR() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.atr
}

// acquire selects the card on a connection of its own.
func (l *sharedLink) acquire(ctx context.Context) error {
	if l.sess != nil {
		return nil
	}
	// Held from before the select: the watcher must not take the card
	// out of the reader when it sees it associated with this session.
	l.held.Store(true)
	c, ids, err := l.b.acquire(ctx)
	if err != nil {
		l.held.Store(false)
		return err
	}
	l.sess = c
	l.b.log.Info("vpcd bridge: card selected (powered on)")
	l.b.event(Event{Kind: Selected, Identities: ids})
	return nil
}

// release frees the card: the server ends the association when its
// connection closes.
func (l *sharedLink) release() {
	if l.sess == nil {
		return
	}
	l.sess.Close()
	l.sess = nil
	l.held.Store(false)
	l.b.log.Info("vpcd bridge: card released (powered off)")
	l.b.event(Event{Kind: Released})
}

func (l *sharedLink) Reset(ctx context.Context, _ card.ResetKind) ([]byte, error) {
	if err := l.acquire(ctx); err != nil {
		return nil, fmt.Errorf("selecting the shared card: %w", err)
	}
	atr, err := l.sess.Reset(ctx)
	if err != nil {
		l.release()
		return nil, fmt.Errorf("remote card reset: %w", err)
	}
	if len(atr) > 0 {
		l.mu.Lock()
		l.atr = atr
		l.mu.Unlock()
	}
	return l.ATR(), nil
}

func (l *sharedLink) Transmit(ctx context.Context, cmd []byte) ([]byte, error) {
	if len(cmd) < 4 || len(cmd) > client.MaxCommandLen {
		return []byte{0x67, 0x00}, nil
	}
	if err := l.acquire(ctx); err != nil { // pcscd powers on first; be safe
		return nil, fmt.Errorf("selecting the shared card: %w", err)
	}
	resp, sw, err := l.sess.Transmit(ctx, cmd)
	if err != nil {
		l.release()
		return nil, fmt.Errorf("remote card: %w", err)
	}
	return append(resp, byte(sw>>8), byte(sw)), nil
}

// PowerOff releases the card.
func (l *sharedLink) PowerOff(context.Context) error {
	l.release()
	return nil
}
