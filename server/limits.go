package server

import (
	"fmt"
	"time"

	"github.com/gorilla/websocket"
)

// rateBucket is a connection's message rate limit (Config.MessageRate,
// MessageBurst, RateStrikes): a token bucket, owned by the connection's
// reading goroutine.
type rateBucket struct {
	tokens  float64
	last    time.Time // when tokens was computed; zero: the bucket is full
	strikes int       // messages refused since the bucket was last full
}

// spend takes one token for a message just read. It reports false when
// the bucket is empty; the caller then refuses the message with
// rateRefused (or lets it pass, for an agent's reply).
func (c *conn) spend() bool {
	cfg := &c.srv.cfg
	if cfg.MessageRate < 0 {
		return true
	}
	b := &c.bucket
	burst := float64(cfg.MessageBurst)
	now := time.Now()
	if b.last.IsZero() {
		b.tokens = burst
	} else {
		b.tokens += now.Sub(b.last).Seconds() * cfg.MessageRate
		if b.tokens >= burst {
			b.tokens = burst
			b.strikes = 0 // the peer backed off
		}
	}
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return true
	}
	return false
}

// rateError is the error text for a message over the limit.
func (c *conn) rateError() string {
	cfg := &c.srv.cfg
	return fmt.Sprintf("rate limit exceeded: at most %g messages per second (bursts of %d); message dropped", cfg.MessageRate, cfg.MessageBurst)
}

// rateRefused refuses a message that spend did not allow: an error for
// the peer or, after RateStrikes refusals without the peer backing off,
// the close. It returns true when the connection is closed; the caller's
// goroutine must return then.
func (c *conn) rateRefused() (closed bool) {
	cfg := &c.srv.cfg
	c.bucket.strikes++
	ev := Refusal{Port: c.role, Remote: c.addr, Name: c.name, Reason: RefusedRateLimited}
	if c.bucket.strikes > cfg.RateStrikes {
		ev.Reason = RefusedRateClosed
		c.srv.obs.Refused(ev)
		msg := fmt.Sprintf("rate limit exceeded %d times without backing off; closing the connection", cfg.RateStrikes)
		c.fail(websocket.ClosePolicyViolation, "rate limit exceeded", msg)
		return true
	}
	c.srv.obs.Refused(ev)
	if c.bucket.strikes == 1 {
		c.log().Warn("message rate limit exceeded", "rate", cfg.MessageRate, "burst", cfg.MessageBurst)
	}
	c.sendError("%s", c.rateError())
	return false
}
