package daemon

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/wsrc-go/wsrc/server"
)

// systemd: Type=notify readiness once the listeners serve (serve), a
// STATUS= line that follows the counts of cards and users (here), the
// watchdog fed for as long as the server runs, socket activation
// (openListeners) and STOPPING=1 when SIGTERM starts the drain. Not
// running under systemd makes all of it a no-op (internal/sdnotify).

// statusEvery is the least time between two STATUS= notifications: a
// burst of connections gives one update, not hundreds.
const statusEvery = time.Second

// statusNotifier is an Observer that keeps systemd's status line up to
// date: events poke it, and its goroutine (run) sends the counts when
// they changed, at most once per statusEvery.
type statusNotifier struct {
	server.NopObserver
	poke chan struct{}          // buffered 1: a pending update
	note atomic.Pointer[string] // put before the counts; nil or "" for none
}

// setNote puts note before the counts (a port not served, say); "" for
// none.
func (n *statusNotifier) setNote(note string) {
	n.note.Store(&note)
	n.kick()
}

func newStatusNotifier() *statusNotifier {
	n := &statusNotifier{poke: make(chan struct{}, 1)}
	n.kick()
	return n
}

func (n *statusNotifier) kick() {
	select {
	case n.poke <- struct{}{}:
	default: // an update is pending already
	}
}

// Connected pokes the status line.
func (n *statusNotifier) Connected(server.ConnEvent) { n.kick() }

// Disconnected pokes the status line.
func (n *statusNotifier) Disconnected(server.ConnEvent, string) { n.kick() }

// CardChanged pokes the status line.
func (n *statusNotifier) CardChanged(server.CardEvent) { n.kick() }

// statusLine words the counts: "3 cards (1 in use), 2 users".
func statusLine(st server.Stats) string {
	plural := func(n int, one, many string) string {
		if n == 1 {
			return "1 " + one
		}
		return fmt.Sprintf("%d %s", n, many)
	}
	return fmt.Sprintf("%s (%d in use), %s", plural(st.Cards, "card", "cards"), st.CardsInUse, plural(st.Users, "user", "users"))
}

// run sends status lines until ctx ends. It is the notifier's only
// goroutine, owned by serve.
func (n *statusNotifier) run(ctx context.Context, stats func() server.Stats, every time.Duration, send func(string, ...any) error) {
	last := ""
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.poke:
		}
		line := statusLine(stats())
		if note := n.note.Load(); note != nil && *note != "" {
			line = *note + "; " + line
		}
		if line != last {
			if err := send("%s", line); err == nil {
				last = line
			}
		}
		t := time.NewTimer(every)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}
