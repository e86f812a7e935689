package vpcd

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"time"
)

// RunOptions configure Run.
type RunOptions struct {
	// Logger receives connection changes; nil means slog.Default().
	Logger *slog.Logger
	// MinBackoff and MaxBackoff bound the wait between connection
	// attempts (doubling, with jitter); zero means 200ms and 5s.
	MinBackoff, MaxBackoff time.Duration
}

// Run keeps c inserted in the vpcd slot at addr until ctx is done: it
// connects, serves, and when vpcd is not listening or drops the connection
// (pcscd stopped or restarted) connects again after a backoff. It returns
// nil when ctx is done.
func Run(ctx context.Context, addr string, c Card, opts RunOptions) error {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	minB, maxB := opts.MinBackoff, opts.MaxBackoff
	if minB <= 0 {
		minB = 200 * time.Millisecond
	}
	if maxB < minB {
		maxB = max(minB, 5*time.Second)
	}
	backoff := minB
	warned := false
	for ctx.Err() == nil {
		conn, err := dial(ctx, addr)
		if err == nil {
			log.Info("vpcd: card inserted", "vpcd", addr)
			warned = false
			backoff = minB
			err = ServeConn(ctx, conn, c)
			if ctx.Err() != nil {
				break
			}
			log.Info("vpcd: connection ended, reconnecting", "vpcd", addr, "err", err)
		} else if !warned {
			log.Warn("vpcd: cannot connect, retrying", "vpcd", addr, "err", err)
			warned = true
		}
		t := time.NewTimer(backoff/2 + rand.N(backoff/2+1))
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
		backoff = min(2*backoff, maxB)
	}
	return nil
}
