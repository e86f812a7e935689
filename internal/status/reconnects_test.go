package status

import (
	"fmt"
	"testing"
	"time"
)

func TestReconnects(t *testing.T) {
	var r Reconnects // defaults: 10 min, 4096 keys
	k := ReconnectKey("pi", "Reader 0", "10.0.0.1", "3b00")
	if r.Returned(k, t0) {
		t.Error("a new card counted as a reconnect")
	}
	r.Left(k, t0)
	if !r.Returned(k, t0.Add(DefaultReconnectWindow)) {
		t.Error("a card back within the window not counted")
	}
	if r.Returned(k, t0.Add(time.Second)) {
		t.Error("one departure counted twice")
	}
	r.Left(k, t0)
	if r.Returned(k, t0.Add(DefaultReconnectWindow+time.Nanosecond)) {
		t.Error("a card back after the window counted")
	}
}

func TestReconnectKey(t *testing.T) {
	// Named agents are known by name and reader, wherever they connect
	// from; unnamed ones by address and ATR.
	if ReconnectKey("pi", "R", "10.0.0.1", "3b00") != ReconnectKey("pi", "R", "10.0.0.2", "3b01") {
		t.Error("a named agent's key depends on its address or ATR")
	}
	for _, pair := range [][2]string{
		{ReconnectKey("pi", "R", "", ""), ReconnectKey("pi", "S", "", "")},
		{ReconnectKey("", "", "10.0.0.1", "3b00"), ReconnectKey("", "", "10.0.0.1", "3b01")},
		{ReconnectKey("", "", "10.0.0.1", "3b00"), ReconnectKey("", "", "10.0.0.2", "3b00")},
		{ReconnectKey("a\x00b", "c", "", ""), ReconnectKey("a", "b\x00c", "", "")},
		{ReconnectKey(`a" "b`, "c", "", ""), ReconnectKey("a", `b" "c`, "", "")},
		{ReconnectKey("agent", "", "", ""), ReconnectKey("", "", "agent", "")},
	} {
		if pair[0] == pair[1] {
			t.Errorf("keys collide: %q", pair[0])
		}
	}
}

// TestReconnectsBounded checks that the remembered set stays within Max:
// expired keys go first, then the oldest.
func TestReconnectsBounded(t *testing.T) {
	r := Reconnects{Window: time.Minute, Max: 3}
	key := func(i int) string { return fmt.Sprint("k", i) }
	r.Left(key(0), t0)                     // expires before the fourth arrives
	r.Left(key(1), t0.Add(50*time.Second)) // oldest live one when the fifth arrives
	r.Left(key(2), t0.Add(55*time.Second))
	r.Left(key(3), t0.Add(70*time.Second)) // full: k0 expired, dropped
	r.Left(key(4), t0.Add(71*time.Second)) // full, none expired: k1 dropped
	if len(r.left) != 3 {
		t.Fatalf("%d keys remembered, want 3", len(r.left))
	}
	now := t0.Add(72 * time.Second)
	for i, want := range []bool{false, false, true, true, true} {
		if got := r.Returned(key(i), now); got != want {
			t.Errorf("k%d returned: %v, want %v", i, got, want)
		}
	}
	// Leaving again with a known key needs no room.
	r.Left(key(9), now)
	r.Left(key(9), now)
	if len(r.left) != 1 {
		t.Errorf("%d keys, want 1", len(r.left))
	}
}
