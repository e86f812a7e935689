package server

import (
	"runtime"
	"testing"
	"testing/synctest"
	"time"
	"weak"
)

// connsOf returns the connections the server has registered.
func connsOf(s *Server) []*conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		out = append(out, c)
	}
	return out
}

// collected reports whether every weak pointer lost its value after a
// garbage collection: nothing keeps those connections reachable.
func collected(ws []weak.Pointer[conn]) bool {
	runtime.GC()
	runtime.GC()
	for _, w := range ws {
		if w.Value() != nil {
			return false
		}
	}
	return true
}

// A connection the peer ends (close frame or dropped TCP) must become
// garbage: its keepalive timer must not keep re-arming itself and
// pinging a dead peer. Issue 10, point 1.
func TestEndedConnectionIsCollected(t *testing.T) {
	for _, how := range []string{"close frame", "dropped"} {
		t.Run(how, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newEnv(t, Config{})
				card := e.atrCard("3b00")
				u := e.helloUser()
				u.Send(`{"msg_type": "list_cards"}`)
				u.Recv()
				var ws []weak.Pointer[conn]
				for _, c := range connsOf(e.srv) {
					ws = append(ws, weak.Make(c))
				}
				if len(ws) != 2 {
					t.Fatalf("%d connections registered, want 2", len(ws))
				}
				if how == "dropped" {
					u.Conn.NetConn().Close()
					card.Conn.NetConn().Close()
				} else {
					u.Close(1000, "")
					card.Close(1000, "")
				}
				u.WaitClosed()
				card.WaitClosed()
				synctest.Wait()
				if n := len(connsOf(e.srv)); n != 0 {
					t.Fatalf("%d connections still registered", n)
				}
				// A stopped timer may stay in the runtime's timer heap
				// until its time comes; three ping intervals (fake time)
				// later only a timer that keeps re-arming holds them.
				time.Sleep(3 * DefaultPingInterval)
				if !collected(ws) {
					t.Fatal("an ended connection is still reachable (keepalive timer still armed?)")
				}
			})
		})
	}
}
