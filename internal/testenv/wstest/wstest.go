// Package wstest gives tests a scripted WebSocket peer: a client that
// connects to a handler (in memory over net.Pipe, or to a real URL),
// sends frames as a test dictates and queues every frame it receives, so a
// test can check them one by one.
//
// The in-memory form ([Pipe]) works inside a testing/synctest bubble: no
// network, fake time, and a handler's timeouts (hello, identification,
// keepalive) run instantly. Every Peer reads its connection continuously
// from its own goroutine, so a server that writes to two peers in turn is
// never blocked by a test that happens to read them in the other order.
//
// It is a test helper (like net/http/httptest): every wait is bounded by
// Peer.Timeout and fails the test instead of hanging it, and every Peer is
// closed by a t.Cleanup.
package wstest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// DefaultTimeout bounds each wait of a Peer unless Peer.Timeout is set.
// Inside a synctest bubble the clock is fake, so this costs no real time.
const DefaultTimeout = 10 * time.Second

// Frame is one received WebSocket data message.
type Frame struct {
	Type int // websocket.TextMessage or websocket.BinaryMessage
	Data []byte
}

// Peer is the client end of one WebSocket connection, driven by a test.
type Peer struct {
	// Conn is the connection. Tests may write to it directly (e.g. a
	// binary frame) but must not read from it: the Peer's goroutine does.
	Conn *websocket.Conn
	// Timeout bounds Recv and WaitClosed; DefaultTimeout if zero.
	Timeout time.Duration

	t      testing.TB
	frames chan Frame    // filled by the read goroutine, closed when it ends
	done   chan struct{} // closed when the read goroutine has ended
	pings  chan string   // ping payloads to answer; closed by the read goroutine
	ponged chan struct{} // closed when the pong goroutine has ended
	mu     sync.Mutex    // guards readErr
	// readErr is the error that ended reading (a *websocket.CloseError
	// when the server closed with a close frame).
	readErr error
}

// queueLen bounds the frames a Peer holds unread. A test that lets more
// pile up has lost track of its script; the read goroutine then blocks
// (and the peer stops reading, as a slow client would).
const queueLen = 256

// Option adjusts a Peer before it starts reading.
type Option func(*websocket.Conn)

// IgnorePings makes the Peer swallow pings without answering, like a
// peer whose network went quiet.
func IgnorePings() Option {
	return func(c *websocket.Conn) { c.SetPingHandler(func(string) error { return nil }) }
}

func newPeer(t testing.TB, c *websocket.Conn, opts ...Option) *Peer {
	p := &Peer{Conn: c, t: t, frames: make(chan Frame, queueLen), done: make(chan struct{}),
		pings: make(chan string, 4), ponged: make(chan struct{})}
	// Pongs go out from their own goroutine, as a TCP socket buffer
	// would let them: over an unbuffered pipe, a reader that wrote the
	// pong itself could block against a server writing to it.
	c.SetPingHandler(func(data string) error {
		select {
		case p.pings <- data:
		default: // a peer this far behind drops pings
		}
		return nil
	})
	for _, o := range opts {
		o(c)
	}
	go p.pongLoop()
	go p.readLoop()
	t.Cleanup(p.shut)
	return p
}

func (p *Peer) pongLoop() {
	defer close(p.ponged)
	for data := range p.pings {
		_ = p.Conn.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(p.timeout()))
	}
}

func (p *Peer) readLoop() {
	defer close(p.done)
	defer close(p.frames)
	defer close(p.pings) // the ping handler runs only inside ReadMessage
	for {
		typ, data, err := p.Conn.ReadMessage()
		if err != nil {
			p.mu.Lock()
			p.readErr = err
			p.mu.Unlock()
			return
		}
		p.frames <- Frame{Type: typ, Data: data}
	}
}

// shut closes the connection and waits for the read goroutine.
func (p *Peer) shut() {
	p.Conn.Close()
	for range p.frames { //nolint:revive // drain so the reader can finish
	}
	<-p.done
	<-p.ponged
}

func (p *Peer) timeout() time.Duration {
	if p.Timeout > 0 {
		return p.Timeout
	}
	return DefaultTimeout
}

// Send writes s as one text frame; a failure fails the test.
func (p *Peer) Send(s string) {
	p.t.Helper()
	if err := p.Conn.WriteMessage(websocket.TextMessage, []byte(s)); err != nil {
		p.t.Fatalf("wstest: sending %s: %v", s, err)
	}
}

// TrySend writes s as one text frame and returns the error, for tests that
// expect the connection to be gone.
func (p *Peer) TrySend(s string) error {
	return p.Conn.WriteMessage(websocket.TextMessage, []byte(s))
}

// Recv returns the next received text frame. It fails the test when the
// connection ends or nothing arrives within the timeout.
func (p *Peer) Recv() string {
	p.t.Helper()
	f, ok := p.next()
	if !ok {
		p.t.Fatalf("wstest: connection ended while waiting for a frame: %v", p.Err())
	}
	if f.Type != websocket.TextMessage {
		p.t.Fatalf("wstest: got a binary frame (%d bytes), want text", len(f.Data))
	}
	return string(f.Data)
}

func (p *Peer) next() (Frame, bool) {
	p.t.Helper()
	timer := time.NewTimer(p.timeout())
	defer timer.Stop()
	select {
	case f, ok := <-p.frames:
		return f, ok
	case <-timer.C:
		p.t.Fatalf("wstest: no frame within %v", p.timeout())
		return Frame{}, false
	}
}

// Pending returns the frames received and not yet consumed, without
// waiting. Inside a synctest bubble, call synctest.Wait first to assert
// that nothing (more) was sent.
func (p *Peer) Pending() []string {
	var out []string
	for {
		select {
		case f, ok := <-p.frames:
			if !ok {
				return out
			}
			out = append(out, string(f.Data))
		default:
			return out
		}
	}
}

// WaitClosed waits until the connection ends, failing the test if any
// further frame arrives first or it does not end within the timeout. It
// returns the close code and reason the server sent, or code 1006
// (websocket.CloseAbnormalClosure) when the connection ended without a
// close frame.
func (p *Peer) WaitClosed() (code int, reason string) {
	p.t.Helper()
	if f, ok := p.next(); ok {
		p.t.Fatalf("wstest: got %q, want the connection to close", f.Data)
	}
	<-p.done // follows the end of frames at once
	return p.CloseStatus()
}

// DrainClosed waits until the connection ends, like WaitClosed, but
// returns the frames that arrived first instead of failing on them.
func (p *Peer) DrainClosed() (code int, reason string, frames []string) {
	p.t.Helper()
	for {
		f, ok := p.next()
		if !ok {
			break
		}
		frames = append(frames, string(f.Data))
	}
	<-p.done
	code, reason = p.CloseStatus()
	return code, reason, frames
}

// CloseStatus returns the close code and reason of an ended connection
// (see WaitClosed), or 0 while it is still open.
func (p *Peer) CloseStatus() (code int, reason string) {
	select {
	case <-p.done:
	default:
		return 0, ""
	}
	var ce *websocket.CloseError
	if errors.As(p.Err(), &ce) {
		return ce.Code, ce.Text
	}
	return websocket.CloseAbnormalClosure, ""
}

// Err returns the error that ended reading, nil while the connection is
// open.
func (p *Peer) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.readErr
}

// Close sends a close frame with code and reason and closes the TCP
// connection without waiting for the server's answer.
func (p *Peer) Close(code int, reason string) {
	msg := websocket.FormatCloseMessage(code, reason)
	_ = p.Conn.WriteControl(websocket.CloseMessage, msg, time.Now().Add(p.timeout()))
	p.Conn.Close()
}

// Drop closes the TCP connection without a close frame, as a killed
// process or pySim-shell does (the server sees 1006).
func (p *Peer) Drop() { p.Conn.Close() }

// Dial connects a Peer to a real WebSocket URL (ws://127.0.0.1:port/).
func Dial(t testing.TB, url string, opts ...Option) *Peer {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: DefaultTimeout}
	c, resp, err := d.Dial(url, nil)
	if err != nil {
		status := ""
		if resp != nil {
			status = " (" + resp.Status + ")"
		}
		t.Fatalf("wstest: dialing %s: %v%s", url, err, status)
	}
	return newPeer(t, c, opts...)
}

// Pipe connects a Peer to h over an in-memory net.Pipe: h serves one HTTP
// request (the WebSocket upgrade) with RemoteAddr set to remoteAddr
// ("127.0.0.1:37586"). Pipe works inside a synctest bubble.
func Pipe(t testing.TB, h http.Handler, remoteAddr string, opts ...Option) *Peer {
	t.Helper()
	c, err := DialPipe(h, remoteAddr)
	if err != nil {
		t.Fatalf("wstest: %v", err)
	}
	return newPeer(t, c, opts...)
}

// DialPipe is Pipe without a Peer: it returns the client connection (for
// tests and benchmarks that read it themselves) or the handshake error.
func DialPipe(h http.Handler, remoteAddr string) (*websocket.Conn, error) {
	srvEnd, cliEnd := net.Pipe()
	served := make(chan struct{})
	go func() {
		defer close(served)
		servePipe(h, srvEnd, remoteAddr)
	}()
	d := websocket.Dialer{
		NetDialContext: func(context.Context, string, string) (net.Conn, error) {
			return cliEnd, nil
		},
		HandshakeTimeout: DefaultTimeout,
	}
	c, resp, err := d.Dial("ws://pipe/", nil)
	if err != nil {
		cliEnd.Close()
		<-served
		if resp != nil {
			return nil, fmt.Errorf("handshake over pipe: %w (%s)", err, resp.Status)
		}
		return nil, fmt.Errorf("handshake over pipe: %w", err)
	}
	<-served
	return c, nil
}

// servePipe reads one HTTP request from conn and lets h answer it. A
// handler that hijacks keeps conn; otherwise the response is written and
// conn closed.
func servePipe(h http.Handler, conn net.Conn, remoteAddr string) {
	br := bufio.NewReader(conn)
	req, err := http.ReadRequest(br)
	if err != nil {
		conn.Close()
		return
	}
	req.RemoteAddr = remoteAddr
	w := &pipeWriter{conn: conn, br: br, header: http.Header{}}
	h.ServeHTTP(w, req)
	if w.hijacked {
		return
	}
	w.flush()
	conn.Close()
}

// pipeWriter is a minimal http.ResponseWriter and http.Hijacker over a
// pipe.
type pipeWriter struct {
	conn     net.Conn
	br       *bufio.Reader
	header   http.Header
	status   int
	body     strings.Builder
	hijacked bool
}

func (w *pipeWriter) Header() http.Header { return w.header }

func (w *pipeWriter) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}

func (w *pipeWriter) Write(b []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return w.body.Write(b)
}

func (w *pipeWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.hijacked {
		return nil, nil, http.ErrHijacked
	}
	w.hijacked = true
	return w.conn, bufio.NewReadWriter(w.br, bufio.NewWriter(w.conn)), nil
}

func (w *pipeWriter) flush() {
	w.WriteHeader(http.StatusOK)
	resp := http.Response{
		StatusCode:    w.status,
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        w.header,
		Body:          nopBody{strings.NewReader(w.body.String())},
		ContentLength: int64(w.body.Len()),
		Close:         true,
	}
	// The client may already be gone; nothing to report then.
	_ = resp.Write(w.conn)
}

type nopBody struct{ *strings.Reader }

func (nopBody) Close() error { return nil }
