package auth

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// ClientKey groups remote addresses the way per-address limits count
// them: an IPv4 address, or the /64 network of an IPv6 address (a single
// subscriber usually has a whole /64). remote is "ip:port", as in
// http.Request.RemoteAddr; anything unparsable is its own key.
func ClientKey(remote string) string {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	a = a.WithZone("").Unmap()
	if a.Is4() {
		return a.String()
	}
	p, _ := a.Prefix(64)
	return p.String()
}

// IsLoopback reports whether remote ("ip:port") is a loopback address.
func IsLoopback(remote string) bool {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

// Throttle slows down clients whose authentication keeps failing. Each
// client key (see ClientKey) has an allowance of Burst failures that
// refills by one every Per; a client with no allowance left is refused
// before its credentials are even checked, until the allowance is back.
//
// An attempt reserves one failure of its key's allowance while its
// credentials are being checked (Begin, then Attempt.End), so that many
// attempts sent at once cannot all be checked before the first failure
// is counted: a key has at most as many attempts in flight as it has
// failures left. This also bounds the password hashing one client can
// cause at a time.
//
// It also thins out the log: the first failure of a key is logged, then
// at most one line per LogEvery with the count of those not logged.
//
// Only keys with failures or attempts in flight are remembered, at most
// MaxKeys of them (the oldest recovered ones are forgotten first), so a
// scan from many addresses cannot grow memory without bound. Safe for
// concurrent use.
type Throttle struct {
	burst    float64
	per      time.Duration
	logEvery time.Duration
	maxKeys  int

	mu   sync.Mutex
	keys map[string]*throttleEntry
}

type throttleEntry struct {
	allowance  float64   // failures left
	at         time.Time // when allowance was computed
	pending    int       // attempts begun and not yet ended
	logged     time.Time // last log line; zero before the first
	suppressed int       // failures not logged since then
}

// Throttle defaults.
const (
	DefaultFailureBurst = 10
	DefaultFailurePer   = 30 * time.Second
	DefaultLogEvery     = time.Minute
	DefaultMaxKeys      = 10000
)

// NewThrottle returns a Throttle allowing burst failures per key, one
// more each per; zero values select the defaults.
func NewThrottle(burst int, per time.Duration) *Throttle {
	if burst <= 0 {
		burst = DefaultFailureBurst
	}
	if per <= 0 {
		per = DefaultFailurePer
	}
	return &Throttle{burst: float64(burst), per: per, logEvery: DefaultLogEvery, maxKeys: DefaultMaxKeys,
		keys: make(map[string]*throttleEntry)}
}

// refill brings e's allowance up to now.
func (t *Throttle) refill(e *throttleEntry, now time.Time) {
	e.allowance += float64(now.Sub(e.at)) / float64(t.per)
	if e.allowance > t.burst {
		e.allowance = t.burst
	}
	e.at = now
}

// Attempt is an authentication attempt that Begin admitted. End it
// exactly once, when its credentials have been checked.
type Attempt struct {
	t   *Throttle
	key string
}

// Begin admits an authentication attempt by key, reserving one of its
// failures left for it. When the key has none left (counting the
// attempts already in flight), ok is false and wait says when to try
// again.
func (t *Throttle) Begin(key string) (a Attempt, wait time.Duration, ok bool) {
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.keys[key]
	if e == nil {
		t.makeRoom(now)
		e = &throttleEntry{allowance: t.burst, at: now}
		t.keys[key] = e
	} else {
		t.refill(e, now)
	}
	if short := float64(e.pending) + 1 - e.allowance; short > 0 {
		return Attempt{}, max(time.Duration(short*float64(t.per)), time.Second), false
	}
	e.pending++
	return Attempt{t: t, key: key}, 0, true
}

// End ends the attempt; failed says that its credentials were wrong (an
// attempt without credentials, or with good ones, is not a failure). It
// reports whether to log this failure and, if so, how many earlier
// failures of the key went unlogged.
func (a Attempt) End(failed bool) (logIt bool, suppressed int) {
	t := a.t
	if t == nil {
		return false, 0
	}
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.keys[a.key]
	if e == nil { // forgotten by makeRoom; cannot happen while pending
		return failed, 0
	}
	e.pending--
	t.refill(e, now)
	if !failed {
		if e.pending == 0 && e.allowance >= t.burst && e.logged.IsZero() {
			delete(t.keys, a.key) // nothing to remember
		}
		return false, 0
	}
	if e.allowance -= 1; e.allowance < 0 {
		e.allowance = 0
	}
	if !e.logged.IsZero() && now.Sub(e.logged) < t.logEvery {
		e.suppressed++
		return false, 0
	}
	suppressed, e.suppressed, e.logged = e.suppressed, 0, now
	return true, suppressed
}

// makeRoom forgets keys when the table is full: first those that have
// their whole allowance back, then, if still full, any one; never one
// with attempts in flight.
func (t *Throttle) makeRoom(now time.Time) {
	if len(t.keys) < t.maxKeys {
		return
	}
	for k, e := range t.keys {
		t.refill(e, now)
		if e.pending == 0 && e.allowance >= t.burst && now.Sub(e.logged) >= t.logEvery {
			delete(t.keys, k)
		}
	}
	for k, e := range t.keys {
		if len(t.keys) < t.maxKeys {
			break
		}
		if e.pending == 0 {
			delete(t.keys, k)
		}
	}
}

// Len returns the number of keys remembered (for tests and metrics).
func (t *Throttle) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.keys)
}
