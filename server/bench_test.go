package server

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsrc-go/wsrc/protocol"
)

// loopback serves a Server on two real loopback ports.
type loopback struct {
	srv        *Server
	user, card *httptest.Server
}

func newLoopback(tb testing.TB, cfg Config) *loopback {
	srv := New(cfg, nil)
	l := &loopback{srv: srv, user: httptest.NewServer(srv.UserHandler()), card: httptest.NewServer(srv.CardHandler())}
	tb.Cleanup(func() {
		l.user.Close()
		l.card.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			tb.Errorf("Shutdown: %v", err)
		}
	})
	return l
}

func wsURL(s *httptest.Server) string { return "ws" + strings.TrimPrefix(s.URL, "http") + "/" }

// benchAgent connects a minimal card agent and says hello.
func benchAgent(tb testing.TB, url, atr string) *websocket.Conn {
	tb.Helper()
	c, _, err := websocket.DefaultDialer.Dial(url, nil)
	if err != nil {
		tb.Fatal(err)
	}
	if err := c.WriteMessage(websocket.TextMessage, []byte(`{"msg_type":"hello","client_type":"card","atr":"`+atr+`"}`)); err != nil {
		tb.Fatal(err)
	}
	return c
}

// serveBenchAgent answers identification with 6a82 (an ATR-only card)
// and every later c_apdu with a fixed response, until the connection ends.
func serveBenchAgent(c *websocket.Conn, ready chan<- struct{}) {
	resp := []byte(`{"response": "62208202782183023f00a5038001718a01058b032f0601c60990014083010183010a", "sw": "9000", "msg_type": "r_apdu"}`)
	notReady := []byte(`{"response": "", "sw": "6a82", "msg_type": "r_apdu"}`)
	identified := false
	for {
		_, data, err := c.ReadMessage()
		if err != nil {
			return
		}
		m, err := protocol.Decode(data)
		if err != nil {
			continue
		}
		switch m := m.(type) {
		case protocol.CAPDU:
			out := resp
			if !identified {
				out = notReady
			}
			if c.WriteMessage(websocket.TextMessage, out) != nil {
				return
			}
		case protocol.StateNotification:
			if !identified && m.NewState == protocol.StateReady {
				identified = true
				ready <- struct{}{}
			}
		}
	}
}

// benchUser connects a user and selects the card with atr.
func benchUser(tb testing.TB, url, atr string) *websocket.Conn {
	tb.Helper()
	c, _, err := websocket.DefaultDialer.Dial(url, nil)
	if err != nil {
		tb.Fatal(err)
	}
	for _, m := range []string{`{"msg_type":"hello","client_type":"user"}`, `{"msg_type":"select_card","id_type":"atr","id_str":"` + atr + `"}`} {
		if err := c.WriteMessage(websocket.TextMessage, []byte(m)); err != nil {
			tb.Fatal(err)
		}
		if _, data, err := c.ReadMessage(); err != nil || !strings.Contains(string(data), "_ack") {
			tb.Fatalf("%s: %s %v", m, data, err)
		}
	}
	return c
}

// BenchmarkRelay relays APDUs user → server → agent → back over loopback,
// with 1 and 100 concurrent sessions. Client and server share the CPU, so
// the figures are an upper bound of the server's cost; wsrc-bench
// (server/relaybench) measures the server alone.
func BenchmarkRelay(b *testing.B) {
	for _, sessions := range []int{1, 100} {
		b.Run(fmt.Sprintf("sessions=%d", sessions), func(b *testing.B) {
			l := newLoopback(b, Config{})
			var agents sync.WaitGroup
			ready := make(chan struct{}, sessions)
			users := make([]*websocket.Conn, sessions)
			for i := range sessions {
				atr := fmt.Sprintf("3b%04x", i)
				a := benchAgent(b, wsURL(l.card), atr)
				agents.Go(func() { serveBenchAgent(a, ready) })
				<-ready
				users[i] = benchUser(b, wsURL(l.user), atr)
			}
			cmd := []byte(`{"msg_type": "c_apdu", "command": "00a40004023f00"}`)
			b.ReportAllocs()
			b.ResetTimer()
			var wg sync.WaitGroup
			per := b.N/sessions + 1
			for _, u := range users {
				wg.Go(func() {
					for range per {
						if err := u.WriteMessage(websocket.TextMessage, cmd); err != nil {
							b.Error(err)
							return
						}
						if _, _, err := u.ReadMessage(); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(per*sessions)/b.Elapsed().Seconds(), "APDU/s")
			for _, u := range users {
				u.Close()
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := l.srv.Shutdown(ctx); err != nil {
				b.Fatal(err)
			}
			agents.Wait()
		})
	}
}

func websocketDial(url string) (*websocket.Conn, *http.Response, error) {
	c, resp, err := websocket.DefaultDialer.Dial(url, nil)
	if c != nil {
		c.Close()
	}
	return c, resp, err
}
