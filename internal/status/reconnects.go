package status

import (
	"strconv"
	"sync"
	"time"
)

// Defaults for Reconnects.
const (
	DefaultReconnectWindow = 10 * time.Minute
	DefaultReconnectMax    = 4096
)

// Reconnects tells a card agent that comes back from a new one, for
// Metrics.AgentReconnected: the relay calls Left when a card connection
// ends and Returned when a card connection says hello, with the same key
// (see ReconnectKey). It remembers at most Max keys for Window each.
// Safe for concurrent use; the zero value uses the defaults.
type Reconnects struct {
	Window time.Duration // how long a departed card is remembered; 0: DefaultReconnectWindow
	Max    int           // how many departed cards are remembered; 0: DefaultReconnectMax

	mu   sync.Mutex           // guards left
	left map[string]time.Time // key → when its connection ended
}

// ReconnectKey is the key for a card connection: the agent name and
// reader from its hello when the agent names itself (wsrc-agent), else
// its IP address and ATR (pySim's card client names nothing).
func ReconnectKey(agent, reader, host, atr string) string {
	// Quoted, so that no two different pairs make the same key.
	if agent != "" {
		return "agent " + strconv.Quote(agent) + " " + strconv.Quote(reader)
	}
	return "addr " + strconv.Quote(host) + " " + strconv.Quote(atr)
}

// Left records that the card connection with key ended at now.
func (r *Reconnects) Left(key string, now time.Time) {
	window, limit := r.limits()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.left == nil {
		r.left = make(map[string]time.Time)
	}
	if _, ok := r.left[key]; !ok && len(r.left) >= limit {
		r.evict(now, window, limit)
	}
	r.left[key] = now
}

// Returned reports whether a card connection with key ended within the
// window before now, and forgets it.
func (r *Reconnects) Returned(key string, now time.Time) bool {
	window, _ := r.limits()
	r.mu.Lock()
	defer r.mu.Unlock()
	t, ok := r.left[key]
	if !ok {
		return false
	}
	delete(r.left, key)
	return now.Sub(t) <= window
}

func (r *Reconnects) limits() (time.Duration, int) {
	window, limit := r.Window, r.Max
	if window <= 0 {
		window = DefaultReconnectWindow
	}
	if limit <= 0 {
		limit = DefaultReconnectMax
	}
	return window, limit
}

// evict makes room for one more key: it drops the expired keys and, if
// that frees nothing, the oldest one. r.mu must be held. (O(n), but only
// when the set is full.)
func (r *Reconnects) evict(now time.Time, window time.Duration, limit int) {
	var oldest string
	var oldestT time.Time
	for k, t := range r.left {
		switch {
		case now.Sub(t) > window:
			delete(r.left, k)
		case oldest == "" || t.Before(oldestT):
			oldest, oldestT = k, t
		}
	}
	if len(r.left) >= limit {
		delete(r.left, oldest)
	}
}
