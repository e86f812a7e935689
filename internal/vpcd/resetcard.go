package vpcd

import (
	"context"
	"slices"
	"sync"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/card/sim"
)

// ResetRecorder is a simulated card whose ATR changes with every reset
// and which records the kind of each reset vpcd asked for, so that a test
// can see that a warm or a cold reset really reached the card and that the
// new ATR travelled back.
type ResetRecorder struct {
	*sim.Card
	mu     sync.Mutex
	n      byte             // resets so far; guarded by mu
	resets []card.ResetKind // guarded by mu
}

// NewResetRecorder wraps c.
func NewResetRecorder(c *sim.Card) *ResetRecorder { return &ResetRecorder{Card: c} }

// ATR returns the card's ATR with its last historical byte (and TCK
// alike, so that it stays valid) changed by the number of resets.
func (r *ResetRecorder) ATR() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	atr := r.Card.ATR()
	atr[len(atr)-2] ^= r.n
	atr[len(atr)-1] ^= r.n
	return atr
}

// Reset records kind, resets the card and returns the new ATR.
func (r *ResetRecorder) Reset(ctx context.Context, kind card.ResetKind) ([]byte, error) {
	r.mu.Lock()
	r.n++
	r.resets = append(r.resets, kind)
	r.mu.Unlock()
	if _, err := r.Card.Reset(ctx, kind); err != nil {
		return nil, err
	}
	return r.ATR(), nil
}

// Resets returns the kinds of reset so far, in order.
func (r *ResetRecorder) Resets() []card.ResetKind {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.resets)
}
