package ccid

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/wsrc-go/wsrc/card"
)

// open powers up the card in the slot and returns its handle. wantGen,
// when not 0, is the card generation an event announced: if that card
// is gone already, open fails with card.ErrRemoved. A previous handle
// of the slot dies (its calls fail with card.ErrRemoved).
func (s *slot) open(ctx context.Context, wantGen uint64) (card.Card, error) {
	if err := s.lockCtx(ctx); err != nil {
		return nil, err
	}
	defer s.unlock()
	g := s.gen.Load()
	if wantGen != 0 && g != wantGen {
		return nil, fmt.Errorf("ccid: %s: the announced card is gone: %w", s.name, card.ErrRemoved)
	}
	s.opens++
	s.active.Store(false)
	raw, err := s.powerUp(ctx)
	if err != nil {
		s.powered = false
		return nil, err
	}
	if err := s.setup(ctx, raw); err != nil {
		if !fatal(ctx, err) {
			_ = s.powerOff(ctx)
		}
		s.powered = false
		return nil, err
	}
	s.powered, s.cardGen = true, g
	if s.gen.Load() != g {
		return nil, fmt.Errorf("ccid: %s: card removed while powering up: %w", s.name, card.ErrRemoved)
	}
	s.active.Store(true)
	return &slotCard{s: s, gen: g, open: s.opens, atr: append([]byte(nil), s.atr...)}, nil
}

// slotCard is the card.Card of one powered card. Its calls run under
// the slot's lock, so it is safe for concurrent use, and presence polls
// never interleave with its commands.
type slotCard struct {
	s    *slot
	gen  uint64 // the card's generation
	open uint64 // the open that made this handle

	mu     sync.Mutex
	atr    []byte // guarded by mu
	closed bool   // guarded by mu
}

var _ card.Card = (*slotCard)(nil)

// ATR returns the ATR of the current power cycle.
func (c *slotCard) ATR() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]byte(nil), c.atr...)
}

// enter takes the slot's lock and checks the handle is still the card
// in the slot.
func (c *slotCard) enter(ctx context.Context) error {
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return fmt.Errorf("ccid: %s: %w", c.s.name, card.ErrClosed)
	}
	if err := c.s.lockCtx(ctx); err != nil {
		return err
	}
	var err error
	switch {
	case c.open != c.s.opens:
		err = fmt.Errorf("ccid: %s: the slot was opened again: %w", c.s.name, card.ErrRemoved)
	case c.s.gen.Load() != c.gen:
		err = fmt.Errorf("ccid: %s: %w", c.s.name, card.ErrRemoved)
	}
	if err != nil {
		c.s.unlock()
	}
	return err
}

// Transmit sends one command APDU and returns the response APDU.
func (c *slotCard) Transmit(ctx context.Context, command []byte) ([]byte, error) {
	if err := c.enter(ctx); err != nil {
		return nil, err
	}
	defer c.s.unlock()
	if !c.s.powered {
		return nil, fmt.Errorf("ccid: %s: the reader deactivated the card: %w", c.s.name, card.ErrRemoved)
	}
	return c.s.transmit(ctx, command)
}

// Reset resets the card: warm is IccPowerOn on the powered card (the
// reader performs a warm reset), falling back to a cold reset; cold
// powers the card off, waits and powers it on. The protocol and speed
// are negotiated again.
func (c *slotCard) Reset(ctx context.Context, kind card.ResetKind) ([]byte, error) {
	if err := c.enter(ctx); err != nil {
		return nil, err
	}
	defer c.s.unlock()
	s := c.s
	var raw []byte
	var err error
	if kind == card.WarmReset && s.powered {
		s.t1 = nil
		if raw, err = s.powerUp(ctx); err != nil && !fatal(ctx, err) {
			s.log.Debug("ccid: warm reset failed, trying cold", "slot", s.name, "err", err)
			raw, err = nil, nil
		}
	}
	if raw == nil && err == nil {
		raw, err = s.coldCycle(ctx)
	}
	if err == nil {
		err = s.setup(ctx, raw)
	}
	if err != nil {
		s.powered = false
		return nil, fmt.Errorf("%v reset: %w", kind, err)
	}
	s.powered = true
	s.active.Store(true)
	c.mu.Lock()
	c.atr = append([]byte(nil), s.atr...)
	c.mu.Unlock()
	return append([]byte(nil), s.atr...), nil
}

// Close powers the card off (when it is still the card in the slot)
// and releases the handle. It is safe to call more than once.
func (c *slotCard) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	s := c.s
	if err := s.lockCtx(context.Background()); err != nil {
		return nil // the reader is gone: nothing left to power off
	}
	defer s.unlock()
	if c.open != s.opens {
		return nil
	}
	s.active.Store(false)
	if s.gen.Load() != c.gen || !s.powered {
		s.powered, s.t1 = false, nil
		return nil
	}
	err := s.powerOff(context.Background())
	if err != nil && !errors.Is(err, card.ErrNoCard) && !errors.Is(err, card.ErrRemoved) {
		return fmt.Errorf("ccid: %s: powering off: %w", s.name, err)
	}
	return nil
}
