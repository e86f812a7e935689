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
// It also thins out the log: the first failure of a key is logged, then
// at most one line per LogEvery with the count of those not logged.
//
// Only failing keys are remembered, at most MaxKeys of them (the oldest
// recovered ones are forgotten first), so a scan from many addresses
// cannot grow memory without bound. Safe for concurrent use.
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

// Check reports whether key may try to authenticate now; when it may
// not, wait says how long until it may.
func (t *Throttle) Check(key string) (wait time.Duration, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.keys[key]
	if e == nil {
		return 0, true
	}
	t.refill(e, time.Now())
	if e.allowance >= 1 {
		return 0, true
	}
	return time.Duration((1 - e.allowance) * float64(t.per)), false
}

// Fail records a failure of key. It reports whether to log this one and,
// if so, how many earlier failures of key went unlogged.
func (t *Throttle) Fail(key string) (logIt bool, suppressed int) {
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.keys[key]
	if e == nil {
		t.makeRoom(now)
		e = &throttleEntry{allowance: t.burst, at: now}
		t.keys[key] = e
	}
	t.refill(e, now)
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
// their whole allowance back, then, if still full, any one.
func (t *Throttle) makeRoom(now time.Time) {
	if len(t.keys) < t.maxKeys {
		return
	}
	for k, e := range t.keys {
		t.refill(e, now)
		if e.allowance >= t.burst && now.Sub(e.logged) >= t.logEvery {
			delete(t.keys, k)
		}
	}
	for k := range t.keys {
		if len(t.keys) < t.maxKeys {
			break
		}
		delete(t.keys, k)
	}
}

// Len returns the number of keys remembered (for tests and metrics).
func (t *Throttle) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.keys)
}
