package agent

import (
	"math/rand/v2"
	"time"
)

// Timing holds every interval a Session uses. Zero fields take the value
// of [DefaultTiming]; tests shorten them.
type Timing struct {
	// DialTimeout bounds one connection attempt: TCP connect and the
	// WebSocket handshake.
	DialTimeout time.Duration
	// HelloTimeout is how long the server has to answer hello with
	// hello_ack.
	HelloTimeout time.Duration
	// WriteWait bounds one write to the WebSocket.
	WriteWait time.Duration
	// PingPeriod is how often the agent pings the server; PongWait is how
	// long it waits for any frame (a pong at least) before it declares the
	// connection dead, so a server that died silently (power cut, network
	// gone) is noticed at most PongWait after the last frame it sent.
	// PongWait must exceed PingPeriod (each ping's pong then has until the
	// next ping is due, plus the rest); zero means 2×PingPeriod, so that a
	// dead server is noticed within two ping intervals.
	PingPeriod time.Duration
	PongWait   time.Duration
	// CloseWait is how long a clean close waits for the server's close
	// frame before dropping the TCP connection.
	CloseWait time.Duration
	// MinBackoff and MaxBackoff bound the delay between connection
	// attempts: it doubles from MinBackoff after each failed attempt up to
	// MaxBackoff, each delay drawn at random from its upper half (jitter).
	// The Manager waits the same way before it opens a card again (see
	// Manager).
	MinBackoff time.Duration
	MaxBackoff time.Duration
	// StableAfter: a connection (or, for the Manager, a card session) that
	// stayed up at least this long resets the backoff to MinBackoff.
	StableAfter time.Duration
	// DisconnectHoldoff is how long the agent stays away after the server
	// sent disconnect.
	DisconnectHoldoff time.Duration
}

// DefaultTiming is the Timing used for every zero field.
var DefaultTiming = Timing{
	DialTimeout:       10 * time.Second,
	HelloTimeout:      10 * time.Second,
	WriteWait:         10 * time.Second,
	PingPeriod:        20 * time.Second,
	PongWait:          40 * time.Second,
	CloseWait:         2 * time.Second,
	MinBackoff:        500 * time.Millisecond,
	MaxBackoff:        8 * time.Second, // back within 8 s of a server's return; jitter spreads a fleet over 4 s
	StableAfter:       30 * time.Second,
	DisconnectHoldoff: 30 * time.Second,
}

// withDefaults returns t with every zero field taken from DefaultTiming.
func (t Timing) withDefaults() Timing {
	d := DefaultTiming
	set := func(v *time.Duration, def time.Duration) {
		if *v <= 0 {
			*v = def
		}
	}
	set(&t.DialTimeout, d.DialTimeout)
	set(&t.HelloTimeout, d.HelloTimeout)
	set(&t.WriteWait, d.WriteWait)
	set(&t.PingPeriod, d.PingPeriod)
	set(&t.CloseWait, d.CloseWait)
	set(&t.MinBackoff, d.MinBackoff)
	set(&t.MaxBackoff, d.MaxBackoff)
	set(&t.StableAfter, d.StableAfter)
	set(&t.DisconnectHoldoff, d.DisconnectHoldoff)
	if t.PongWait <= t.PingPeriod { // zero, or too short to hear a pong
		t.PongWait = 2 * t.PingPeriod
	}
	if t.MaxBackoff < t.MinBackoff {
		t.MaxBackoff = t.MinBackoff
	}
	return t
}

// backoff is the delay before reconnection attempt number failures+1:
// MinBackoff·2^failures capped at MaxBackoff, then jittered into the upper
// half, [d/2, d].
func (t Timing) backoff(failures int, jitter func(time.Duration) time.Duration) time.Duration {
	d := t.MinBackoff
	for i := 0; i < failures && d < t.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, t.MaxBackoff)
	return d/2 + jitter(d/2)
}

// randJitter returns a random duration in [0, d].
func randJitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return rand.N(d + 1)
}

// sleep waits for d or until done is closed, whichever comes first, and
// reports whether the full d elapsed.
func sleep(done <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-done:
		return false
	}
}
