package server

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsrc-go/wsrc/protocol"
)

// faultyHandler serves h, but the connection it hijacks can be made to
// fail its reads with err, as a kernel reports a dead TCP connection.
type faultyHandler struct {
	h   http.Handler
	err error

	mu    sync.Mutex
	conns []*faultyConn
}

func (f *faultyHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.h.ServeHTTP(&faultyWriter{ResponseWriter: w, f: f}, r)
}

// trip makes every hijacked connection's reads fail from now on.
func (f *faultyHandler) trip() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		c.tripped.Store(true)
		c.Conn.SetReadDeadline(time.Now()) // wake a read in progress
	}
}

type faultyWriter struct {
	http.ResponseWriter
	f *faultyHandler
}

func (w *faultyWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, rw, err := w.ResponseWriter.(http.Hijacker).Hijack()
	if err != nil {
		return nil, nil, err
	}
	fc := &faultyConn{Conn: c, err: w.f.err}
	w.f.mu.Lock()
	w.f.conns = append(w.f.conns, fc)
	w.f.mu.Unlock()
	return fc, rw, nil
}

type faultyConn struct {
	net.Conn
	err     error
	tripped atomic.Bool
}

func (c *faultyConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if c.tripped.Load() {
		return 0, c.err
	}
	return n, err
}

// errKernelTimeout is what a read returns when the kernel gave up on a
// TCP connection (keepalive probes or retransmissions unanswered).
var errKernelTimeout = &net.OpError{Op: "read", Net: "tcp",
	Source: &net.TCPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 4221},
	Addr:   &net.TCPAddr{IP: net.IPv4(10, 9, 8, 7), Port: 51234},
	Err:    os.NewSyscallError("read", syscall.ETIMEDOUT)}

// The kernel timing out a card agent's TCP connection is a lost card
// connection for its user, in words that name no address; not a protocol
// error with close 1002. Issue 10, point 7.
func TestKernelTCPTimeoutIsALostCard(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &endRecorder{}
		e := newEnv(t, Config{Observer: rec})
		fh := &faultyHandler{h: e.srv.CardHandler(), err: errKernelTimeout}
		c := e.pipe(fh, "")
		helloCard(t, c, "3b02")
		identifyATROnly(t, c)
		u := e.helloUser()
		selectCard(t, u, "atr", "3b02", `{"ATR": "3b02"}`)
		expectJSON(t, c.Recv(), stateAssoc)
		u.Send(`{"msg_type": "c_apdu", "command": "00b0000000"}`)
		expectCAPDU(t, c, "00b0000000")
		fh.trip()
		got := u.Recv()
		expectError(t, got, "card disconnected: the card agent's connection was lost")
		if strings.Contains(got, "10.") || strings.Contains(got, "tcp") {
			t.Errorf("the user was shown the agent's connection: %s", got)
		}
		synctest.Wait()
		if ends := rec.get(); len(ends) == 0 || !ends[0].Lost {
			t.Errorf("card end events %+v, want one with Lost", ends)
		}
	})
}

// A text frame that is not UTF-8 fails the connection with 1007 (RFC
// 6455, section 8.1). Issue 10, point 7.
func TestInvalidUTF8Closes1007(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{})
		u := e.helloUser()
		if err := u.Conn.WriteMessage(websocket.TextMessage, []byte("{\"msg_type\": \"list_cards\", \"x\": \"\xff\xfe\"}")); err != nil {
			t.Fatal(err)
		}
		expectError(t, u.Recv(), "invalid UTF-8")
		expectClosed(t, u, websocket.CloseInvalidFramePayloadData, "invalid UTF-8")
	})
}

// countingHandler counts log records whose message is msg.
type countingHandler struct {
	msg string
	n   atomic.Int32
}

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *countingHandler) WithGroup(string) slog.Handler            { return h }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Message == h.msg {
		h.n.Add(1)
	}
	return nil
}

// Writes to a connection that has failed are logged and counted once,
// not once per message still addressed to it. Issue 10, point 7.
func TestWriteFailureLoggedOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &recorder{}
		e := newEnv(t, Config{Observer: rec})
		logged := &countingHandler{msg: "write failed; closing"}
		e.srv.log = slog.New(logged)
		u := e.helloUser()
		conns := connsOf(e.srv)
		u.Conn.NetConn().Close()
		for range 5 {
			if conns[0].write(protocol.Error{Message: "for a peer that is gone"}) == nil {
				t.Fatal("write to a closed connection succeeded")
			}
		}
		synctest.Wait()
		if n := logged.n.Load(); n != 1 {
			t.Errorf("%d 'write failed' log lines, want 1", n)
		}
		if problems := rec.count("problem user 1 " + string(ProblemWrite)); problems != 1 {
			t.Errorf("%d write problems counted, want 1", problems)
		}
	})
}

// addrConn is a net.Conn with a remote address of the test's choosing
// that remembers whether it was closed.
type addrConn struct {
	net.Conn
	remote string
	closed atomic.Bool
}

func (c *addrConn) Close() error { c.closed.Store(true); return c.Conn.Close() }

func (c *addrConn) RemoteAddr() net.Addr {
	return net.TCPAddrFromAddrPort(netip.MustParseAddrPort(c.remote))
}

// Connections that are not WebSockets yet are bounded per client and per
// port: further ones are closed at once and counted as refusals; loopback
// clients are not counted per address; an upgraded (hijacked) or closed
// connection frees its place. Issue 10, point 2.
func TestPendingConnectionsBounded(t *testing.T) {
	rec := &recorder{}
	srv := New(Config{MaxPending: 3, MaxConnsPerAddr: 2, Observer: rec}, nil)
	hook := srv.ConnState(PortUser)
	open := func(remote string) (*addrConn, func() bool) {
		a, b := net.Pipe()
		t.Cleanup(func() { a.Close(); b.Close() })
		c := &addrConn{Conn: a, remote: remote}
		hook(c, http.StateNew)
		return c, c.closed.Load // closed by the hook?
	}
	a1, _ := open("198.51.100.1:1")
	open("198.51.100.1:2")
	if _, closed := open("198.51.100.1:3"); !closed() {
		t.Fatal("a third connection from one client was kept (MaxConnsPerAddr 2)")
	}
	if _, closed := open("198.51.100.2:1"); closed() {
		t.Fatal("another client's first connection was closed")
	}
	if _, closed := open("127.0.0.1:1"); !closed() {
		t.Fatal("a fourth connection on the port was kept (MaxPending 3)")
	}
	if u, _ := srv.Pending(); u != 3 {
		t.Fatalf("%d pending, want 3", u)
	}
	hook(a1, http.StateHijacked) // upgraded: a WebSocket now, counted by admit
	if _, closed := open("198.51.100.1:4"); closed() {
		t.Fatal("the upgrade did not free its place")
	}
	if n := rec.count(string(RefusedPending)); n != 2 {
		t.Fatalf("%d refusals counted, want 2", n)
	}
	// The card port counts on its own.
	if c, _ := srv.Pending(); c != 3 {
		t.Fatalf("%d user connections pending, want 3", c)
	}
	if _, cards := srv.Pending(); cards != 0 {
		t.Fatalf("%d card connections pending, want 0", cards)
	}
}

// The ATR is one piece of state: after a reset, log lines show the new
// one (they showed the hello's). Issue 11.
func TestLogShowsATRAfterReset(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{})
		var buf strings.Builder
		var mu sync.Mutex
		e.srv.log = slog.New(slog.NewTextHandler(lockedWriter{&mu, &buf}, nil))
		p := e.pair("3b01")
		p.user.Send(`{"msg_type": "reset_req"}`)
		expectJSON(t, p.card.Recv(), `{"msg_type": "reset_req"}`)
		p.card.Send(`{"msg_type": "reset_resp", "atr": "3b99"}`)
		expectJSON(t, p.user.Recv(), `{"atr": "3b99", "msg_type": "reset_resp"}`)
		p.card.Close(1000, "")
		p.card.WaitClosed()
		synctest.Wait()
		mu.Lock()
		defer mu.Unlock()
		if !strings.Contains(buf.String(), `msg="card connection ended" port=card remote=127.0.0.1:40001 atr=3b99`) {
			t.Errorf("log:\n%s", buf.String())
		}
	})
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// A web page in a browser must not drive cards: an upgrade request whose
// Origin is another host than the one it was sent to gets 403 before
// any WebSocket exists (gorilla's default origin check, kept on
// purpose); WSRC peers send no Origin. docs/protocol.md section 1.
func TestCrossOriginUpgradeRefused(t *testing.T) {
	srv := New(Config{}, nil)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	for _, h := range []http.Handler{srv.UserHandler(), srv.CardHandler()} {
		req := httptest.NewRequest("GET", "http://relay.example:4220/", nil)
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "websocket")
		req.Header.Set("Sec-WebSocket-Version", "13")
		req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
		req.Header.Set("Origin", "https://attacker.example")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusForbidden {
			t.Errorf("cross-origin upgrade: %d %s, want 403", w.Code, w.Body)
		}
	}
}
