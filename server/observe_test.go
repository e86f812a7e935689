package server

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsrc-go/wsrc/internal/testenv/wstest"
)

// endRecorder keeps the CardChanged events of cards that ended.
type endRecorder struct {
	NopObserver
	mu   sync.Mutex
	ends []CardEvent
}

func (r *endRecorder) CardChanged(ev CardEvent) {
	if ev.State == "" {
		r.mu.Lock()
		r.ends = append(r.ends, ev)
		r.mu.Unlock()
	}
}

func (r *endRecorder) get() []CardEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]CardEvent(nil), r.ends...)
}

// CardEvent.Lost tells a lost card connection (which the agent will
// re-establish: a reconnect) from one that was closed.
func TestCardLost(t *testing.T) {
	const helloNamed = `{"msg_type":"hello","client_type":"card","atr":"3b00","agent":"pi","reader":"r0"}`
	for _, tc := range []struct {
		name string
		lost bool
		run  func(t *testing.T, e *env)
	}{
		{"agent closes 1000", false, func(t *testing.T, e *env) {
			c := e.atrCard("3b01")
			c.Close(websocket.CloseNormalClosure, "card removed")
		}},
		{"agent closes 1011", false, func(t *testing.T, e *env) {
			c := e.atrCard("3b01")
			c.Close(websocket.CloseInternalServerErr, "reader broke")
		}},
		{"TCP dropped", true, func(t *testing.T, e *env) {
			c := e.atrCard("3b01")
			c.Drop()
		}},
		{"keepalive", true, func(t *testing.T, e *env) {
			c := e.pipe(e.srv.CardHandler(), "", wstest.IgnorePings())
			helloCard(t, c, "3b01")
			identifyATROnly(t, c)
			expectClosed(t, c, websocket.CloseInternalServerErr, "keepalive ping timeout")
		}},
		{"request timeout", true, func(t *testing.T, e *env) {
			p := e.pair("3b01")
			p.user.Send(`{"msg_type": "c_apdu", "command": "00b0000000"}`)
			expectCAPDU(t, p.card, "00b0000000")
			expectError(t, p.user.Recv(), "card disconnected: no reply to c_apdu")
		}},
		{"replaced", true, func(t *testing.T, e *env) {
			old := e.card("")
			old.Send(helloNamed)
			expectJSON(t, old.Recv(), `{"msg_type": "hello_ack"}`)
			expectCAPDU(t, old, cmdSelectISDR)
			identifyATROnly(t, old)
			c := e.card("")
			c.Send(helloNamed)
			expectJSON(t, c.Recv(), `{"msg_type": "hello_ack"}`)
			expectClosed(t, old, websocket.ClosePolicyViolation, "replaced")
		}},
		{"protocol error", false, func(t *testing.T, e *env) {
			c := e.card("")
			c.Send(`{"msg_type":"hello","client_type":"card","atr":"3b01"}`)
			expectJSON(t, c.Recv(), `{"msg_type": "hello_ack"}`)
			expectCAPDU(t, c, cmdSelectISDR)
			c.Send(`{"msg_type": "r_apdu", "response": "", "sw": "zz"}`)
			expectError(t, c.Recv(), "identification failed")
			expectClosed(t, c, websocket.CloseProtocolError, "invalid answer")
		}},
		{"server shutdown", false, func(t *testing.T, e *env) {
			c := e.atrCard("3b01")
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := e.srv.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
			c.WaitClosed()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				rec := &endRecorder{}
				e := newEnv(t, Config{Observer: rec, RequestTimeout: time.Minute})
				tc.run(t, e)
				synctest.Wait()
				ends := rec.get()
				if len(ends) == 0 {
					t.Fatal("no end event")
				}
				if ev := ends[0]; ev.Lost != tc.lost || ev.Remote == "" {
					t.Errorf("end event %+v: Lost = %v, want %v", ev, ev.Lost, tc.lost)
				}
			})
		})
	}
}

// Ready is nil until Shutdown starts.
func TestReady(t *testing.T) {
	srv := New(Config{}, nil)
	if err := srv.Ready(); err != nil {
		t.Fatalf("Ready = %v", err)
	}
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := srv.Ready(); err == nil {
		t.Fatal("Ready = nil after Shutdown")
	}
}
