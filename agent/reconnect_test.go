package agent

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsrc-go/wsrc/protocol"
)

// pipeServer is an in-memory card port for synctest bubbles: every dial
// gets one end of a net.Pipe, the server end is upgraded to a WebSocket
// and handed to a scripted handler. Dial times are recorded.
type pipeServer struct {
	t *testing.T
	// refuse decides whether dial number n (from 0) fails.
	refuse func(n int) error
	// handle plays the server side of connection number n.
	handle func(n int, ws *websocket.Conn)
	// answer, when set, may refuse the upgrade of connection number n with
	// an HTTP status (0 upgrades) and headers.
	answer func(n int) (status int, h http.Header)

	wg      sync.WaitGroup
	mu      sync.Mutex
	dials   []time.Duration // guarded by mu: dial times since start
	headers []http.Header   // guarded by mu: upgrade request headers
	start   time.Time
}

func (p *pipeServer) dialer() *websocket.Dialer {
	p.start = time.Now()
	return &websocket.Dialer{NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		p.mu.Lock()
		n := len(p.dials)
		p.dials = append(p.dials, time.Since(p.start))
		p.mu.Unlock()
		if p.refuse != nil {
			if err := p.refuse(n); err != nil {
				return nil, err
			}
		}
		cli, srv := net.Pipe()
		p.wg.Go(func() { p.serve(n, srv) })
		return cli, nil
	}}
}

func (p *pipeServer) serve(n int, nc net.Conn) {
	defer nc.Close()
	br := bufio.NewReader(nc)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	p.mu.Lock()
	p.headers = append(p.headers, req.Header)
	p.mu.Unlock()
	if p.answer != nil {
		if status, h := p.answer(n); status != 0 {
			resp := &http.Response{StatusCode: status, ProtoMajor: 1, ProtoMinor: 1, Header: h, Close: true}
			resp.Write(nc) //nolint:errcheck // the agent may have gone
			return
		}
	}
	w := &hijackWriter{conn: nc, brw: bufio.NewReadWriter(br, bufio.NewWriter(nc)), h: http.Header{}}
	ws, err := (&websocket.Upgrader{}).Upgrade(w, req, nil)
	if err != nil {
		p.t.Errorf("upgrade: %v", err)
		return
	}
	defer ws.Close()
	p.handle(n, ws)
}

func (p *pipeServer) dialTimes() []time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]time.Duration(nil), p.dials...)
}

// hijackWriter is the http.ResponseWriter + http.Hijacker gorilla's
// Upgrader needs, over a raw connection.
type hijackWriter struct {
	conn net.Conn
	brw  *bufio.ReadWriter
	h    http.Header
}

func (w *hijackWriter) Header() http.Header         { return w.h }
func (w *hijackWriter) Write(b []byte) (int, error) { return w.conn.Write(b) }
func (w *hijackWriter) WriteHeader(int)             {}
func (w *hijackWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return w.conn, w.brw, nil
}

// helloAndHold answers hello and then reads (answering pings) for hold,
// then drops the connection.
func helloAndHold(t *testing.T, ws *websocket.Conn, hold time.Duration) {
	if _, data, err := ws.ReadMessage(); err != nil {
		t.Errorf("reading hello: %v", err)
		return
	} else if m, err := protocol.Decode(data); err != nil || m.MsgType() != protocol.TypeHello {
		t.Errorf("first message %s (%v), want hello", data, err)
		return
	}
	if err := ws.WriteMessage(websocket.TextMessage, protocol.Encode(protocol.HelloAck{})); err != nil {
		t.Errorf("sending hello_ack: %v", err)
		return
	}
	ws.SetReadDeadline(time.Now().Add(hold))
	for {
		if _, _, err := ws.ReadMessage(); err != nil {
			return
		}
	}
}

var errRefused = errors.New("connection refused (test)")

// runBubble runs a Session against p for d of fake time, then cancels it
// and checks that Run returns nil at once.
func runBubble(t *testing.T, p *pipeServer, timing Timing, jitter func(time.Duration) time.Duration, d time.Duration) {
	s := NewSession(Config{Server: "ws://card.example:4221/", Logger: testLogger(), Timing: timing, Dialer: p.dialer()}, newFakeCard(), "r")
	if jitter != nil {
		s.jitter = jitter
	}
	ctx, cancel := context.WithCancel(context.Background())
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		err = s.Run(ctx)
	}()
	time.Sleep(d)
	cancelled := time.Now()
	cancel()
	<-done
	if err != nil {
		t.Errorf("Run = %v, want nil after cancel", err)
	}
	if waited := time.Since(cancelled); waited > timing.withDefaults().CloseWait {
		t.Errorf("Run took %v to return after cancel", waited)
	}
	p.wg.Wait()
}

func fullJitter(d time.Duration) time.Duration { return d }
func noJitter(time.Duration) time.Duration     { return 0 }

func checkDials(t *testing.T, got []time.Duration, want ...time.Duration) {
	t.Helper()
	if len(got) < len(want) {
		t.Fatalf("dials at %v, want at least %v", got, want)
	}
	for i, w := range want {
		if got[i] != w {
			t.Fatalf("dial %d at %v, want %v (all: %v)", i, got[i], w, got)
		}
	}
}

const s1 = time.Second

// TestBackoffSchedule: waits double from MinBackoff to MaxBackoff; the
// jitter draws from the upper half of each wait.
func TestBackoffSchedule(t *testing.T) {
	for _, tc := range []struct {
		name   string
		jitter func(time.Duration) time.Duration
		want   []time.Duration
	}{
		{"max jitter", fullJitter, []time.Duration{0, 1 * s1, 3 * s1, 7 * s1, 15 * s1, 31 * s1, 61 * s1, 91 * s1, 121 * s1}},
		{"min jitter", noJitter, []time.Duration{0, s1 / 2, 3 * s1 / 2, 7 * s1 / 2, 15 * s1 / 2, 31 * s1 / 2, 61 * s1 / 2, 91 * s1 / 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				p := &pipeServer{t: t, refuse: func(int) error { return errRefused }}
				runBubble(t, p, Timing{MinBackoff: s1, MaxBackoff: 30 * s1}, tc.jitter, tc.want[len(tc.want)-1]+s1/4)
				got := p.dialTimes()
				checkDials(t, got, tc.want...)
				if len(got) != len(tc.want) {
					t.Errorf("%d dials, want %d: %v", len(got), len(tc.want), got)
				}
			})
		})
	}
}

// TestBackoffJitterRange: with the real random jitter every wait lies in
// the upper half of its doubling step.
func TestBackoffJitterRange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := &pipeServer{t: t, refuse: func(int) error { return errRefused }}
		runBubble(t, p, Timing{MinBackoff: s1, MaxBackoff: 8 * s1}, nil, 200*s1)
		got := p.dialTimes()
		if len(got) < 20 {
			t.Fatalf("only %d dials in 200s", len(got))
		}
		step := s1
		for i := 1; i < len(got); i++ {
			gap := got[i] - got[i-1]
			if gap < step/2 || gap > step {
				t.Errorf("wait %d = %v, want within [%v, %v]", i, gap, step/2, step)
			}
			step = min(2*step, 8*s1)
		}
	})
}

// TestBackoffResetAfterStable: a connection that stayed up StableAfter
// resets the waits; a short one does not.
func TestBackoffResetAfterStable(t *testing.T) {
	for _, tc := range []struct {
		name string
		hold time.Duration
		want []time.Duration
	}{
		// Dials 0 and 1 fail (waits 1s, 2s); dial 2 connects at 3s and
		// holds; then every dial fails.
		{"stable", 40 * s1, []time.Duration{0, 1 * s1, 3 * s1, 44 * s1, 46 * s1, 50 * s1}},
		{"short", 5 * s1, []time.Duration{0, 1 * s1, 3 * s1, 12 * s1, 20 * s1, 36 * s1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				p := &pipeServer{
					t: t,
					refuse: func(n int) error {
						if n == 2 {
							return nil
						}
						return errRefused
					},
					handle: func(n int, ws *websocket.Conn) { helloAndHold(t, ws, tc.hold) },
				}
				timing := Timing{MinBackoff: s1, MaxBackoff: 60 * s1, StableAfter: 30 * s1}
				runBubble(t, p, timing, fullJitter, tc.want[len(tc.want)-1]+s1/2)
				checkDials(t, p.dialTimes(), tc.want...)
			})
		})
	}
}

// TestDisconnectHoldoff: after the server's disconnect the agent stays
// away exactly DisconnectHoldoff.
func TestDisconnectHoldoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := &pipeServer{t: t}
		p.handle = func(n int, ws *websocket.Conn) {
			if n > 0 {
				helloAndHold(t, ws, time.Hour)
				return
			}
			ws.ReadMessage()
			ws.WriteMessage(websocket.TextMessage, protocol.Encode(protocol.HelloAck{}))
			ws.WriteMessage(websocket.TextMessage, protocol.Encode(protocol.Disconnect{}))
			_, data, err := ws.ReadMessage()
			if err != nil || string(data) != `{"msg_type": "disconnect_ack"}` {
				t.Errorf("disconnect answered with %s, %v", data, err)
			}
			_, _, err = ws.ReadMessage()
			var ce *websocket.CloseError
			if !errors.As(err, &ce) || ce.Code != websocket.CloseNormalClosure {
				t.Errorf("after disconnect_ack: %v, want close 1000", err)
			}
		}
		runBubble(t, p, Timing{DisconnectHoldoff: 30 * s1}, fullJitter, 31*s1)
		checkDials(t, p.dialTimes(), 0, 30*s1)
	})
}

// TestTimeouts: a dial that hangs, a handshake that hangs, a server that
// never sends hello_ack and one that stops answering pings are each
// given up after their timeout.
func TestTimeouts(t *testing.T) {
	timing := Timing{MinBackoff: s1, MaxBackoff: s1, DialTimeout: 10 * s1, HelloTimeout: 5 * s1, PingPeriod: 20 * s1, PongWait: 45 * s1}
	block := func(t *testing.T) (wait func(), release func()) {
		ch := make(chan struct{})
		return func() { <-ch }, func() { close(ch) }
	}
	t.Run("dial", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			p := &pipeServer{t: t}
			d := p.dialer()
			hung := d.NetDialContext
			d.NetDialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
				hung(ctx, network, addr) //nolint:errcheck // only records the time
				<-ctx.Done()
				return nil, ctx.Err()
			}
			p.refuse = func(int) error { return errRefused }
			s := NewSession(Config{Server: "ws://card.example:4221/", Logger: testLogger(), Timing: timing, Dialer: d}, newFakeCard(), "r")
			s.jitter = fullJitter
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); s.Run(ctx) }()
			time.Sleep(22*s1 + s1/2)
			cancel()
			<-done
			checkDials(t, p.dialTimes(), 0, 11*s1, 22*s1)
		})
	})
	t.Run("handshake", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			wait, release := block(t)
			p := &pipeServer{t: t}
			d := p.dialer()
			d.NetDialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
				p.mu.Lock()
				p.dials = append(p.dials, time.Since(p.start))
				p.mu.Unlock()
				cli, srv := net.Pipe()
				p.wg.Go(func() {
					defer srv.Close()
					http.ReadRequest(bufio.NewReader(srv)) //nolint:errcheck // never answered
					wait()
				})
				return cli, nil
			}
			s := NewSession(Config{Server: "ws://card.example:4221/", Logger: testLogger(), Timing: timing, Dialer: d}, newFakeCard(), "r")
			s.jitter = fullJitter
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); s.Run(ctx) }()
			time.Sleep(11*s1 + s1/2)
			cancel()
			<-done
			release()
			p.wg.Wait()
			checkDials(t, p.dialTimes(), 0, 11*s1)
		})
	})
	t.Run("hello_ack", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			p := &pipeServer{t: t, handle: func(n int, ws *websocket.Conn) {
				for { // read (hello, close) but never answer
					if _, _, err := ws.ReadMessage(); err != nil {
						return
					}
				}
			}}
			runBubble(t, p, timing, fullJitter, 12*s1+s1/2)
			checkDials(t, p.dialTimes(), 0, 6*s1, 12*s1)
		})
	})
	t.Run("pong", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			p := &pipeServer{t: t, handle: goesSilent(t, 0)}
			runBubble(t, p, timing, fullJitter, 46*s1+s1/2)
			checkDials(t, p.dialTimes(), 0, 46*s1)
		})
	})
}

// goesSilent is a server whose first connection answers hello and then
// pings for the time given, after which it reads nothing more (pings go
// unanswered) but keeps the connection open for an hour; later
// connections are helloAndHold.
func goesSilent(t *testing.T, answerFor time.Duration) func(n int, ws *websocket.Conn) {
	return func(n int, ws *websocket.Conn) {
		if n > 0 {
			helloAndHold(t, ws, time.Hour)
			return
		}
		ws.ReadMessage()
		ws.WriteMessage(websocket.TextMessage, protocol.Encode(protocol.HelloAck{}))
		ws.SetReadDeadline(time.Now().Add(answerFor))
		for {
			if _, _, err := ws.ReadMessage(); err != nil {
				break
			}
		}
		time.Sleep(time.Hour)
	}
}

// TestKeepaliveDeadServer: with the default PongWait, a server that goes
// silent (stops reading, so it answers no ping, but keeps the TCP
// connection open, as after a power cut) is noticed within two ping
// intervals of its last pong, and the agent dials again.
func TestKeepaliveDeadServer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const ping = 20 * s1
		const dies = 65 * s1 // after the pongs to the pings at 20, 40 and 60 s
		p := &pipeServer{t: t, handle: goesSilent(t, dies)}
		timing := Timing{MinBackoff: s1, MaxBackoff: s1, PingPeriod: ping}
		if got := timing.withDefaults().PongWait; got != 2*ping {
			t.Fatalf("default PongWait %v, want %v", got, 2*ping)
		}
		runBubble(t, p, timing, fullJitter, 2*time.Minute)
		dials := p.dialTimes()
		if len(dials) != 2 {
			t.Fatalf("dials at %v, want 2", dials)
		}
		// Noticed at the last pong (60 s) + PongWait (40 s), then 1 s backoff.
		if noticed := dials[1] - s1; noticed != 100*s1 || noticed-dies > 2*ping {
			t.Fatalf("dead server noticed at %v; it went silent at %v", noticed, dies)
		}
	})
}

// TestCancelDuringWait: cancelling ctx ends a long backoff wait at once.
func TestCancelDuringWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := &pipeServer{t: t, refuse: func(int) error { return errRefused }}
		runBubble(t, p, Timing{MinBackoff: time.Hour, MaxBackoff: time.Hour}, fullJitter, time.Minute)
		checkDials(t, p.dialTimes(), 0)
	})
}

// After an outage of any length, an agent with the default timing tries
// again within 8 s (so it is back within 10 s of the server's return,
// the connection itself included), and a fleet spreads its attempts over
// 4 s rather than all at once. Issue 10, point 7.
func TestDefaultBackoffAfterLongOutage(t *testing.T) {
	timing := Timing{}.withDefaults()
	lo, hi := timing.backoff(1000, func(time.Duration) time.Duration { return 0 }), timing.backoff(1000, func(d time.Duration) time.Duration { return d })
	if hi > 8*time.Second || lo < 4*time.Second {
		t.Fatalf("after a long outage the delay is %v to %v, want within 4 s to 8 s", lo, hi)
	}
	for range 1000 {
		if d := timing.backoff(1000, randJitter); d < lo || d > hi {
			t.Fatalf("delay %v outside [%v, %v]", d, lo, hi)
		}
	}
}
