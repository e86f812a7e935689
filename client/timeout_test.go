package client_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsrc-go/wsrc/client"
	"github.com/wsrc-go/wsrc/protocol"
)

// pipeListener hands out the server ends of in-memory connections, so
// that a whole client/server exchange runs inside a synctest bubble, on
// its fake clock.
type pipeListener struct {
	conns     chan net.Conn
	closed    chan struct{}
	closeOnce sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

// dial is a client.WithNetDialContext function.
func (l *pipeListener) dial(ctx context.Context, _, _ string) (net.Conn, error) {
	c, s := net.Pipe()
	select {
	case l.conns <- s:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

// servePipe runs script as the server of every connection dialled through
// the returned listener, inside the current synctest bubble.
func servePipe(t *testing.T, script func(conn *websocket.Conn)) (*pipeListener, func()) {
	l := newPipeListener()
	var wg sync.WaitGroup
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err != nil {
			t.Errorf("upgrade: %v", err)
			return
		}
		defer conn.Close()
		script(conn)
	})}
	wg.Go(func() { _ = srv.Serve(l) })
	return l, func() {
		srv.Close()
		wg.Wait()
	}
}

// A request without a reply fails after the request timeout, exactly.
func TestRequestTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		code := make(chan int, 1)
		l, stop := servePipe(t, func(conn *websocket.Conn) {
			greet(t, conn)
			expect(t, conn, protocol.TypeCAPDU)
			code <- closeCode(conn) // never answers
		})
		defer stop()
		c, err := client.Dial(t.Context(), "ws://wsrc.test/", client.WithNetDialContext(l.dial))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		start := time.Now()
		_, _, err = c.Transmit(t.Context(), selectMF)
		if !errors.Is(err, client.ErrTimeout) {
			t.Fatalf("Transmit error %v, want ErrTimeout", err)
		}
		if d := time.Since(start); d != client.DefaultRequestTimeout {
			t.Errorf("timed out after %v, want %v", d, client.DefaultRequestTimeout)
		}
		if got := <-code; got != websocket.CloseNormalClosure {
			t.Errorf("server saw close code %d, want 1000", got)
		}
		if _, err := c.ListCards(t.Context()); !errors.Is(err, client.ErrClosed) || !errors.Is(err, client.ErrTimeout) {
			t.Errorf("later call error %v", err)
		}
	})
}

// A server that never answers hello makes Dial fail after the request
// timeout; a ctx deadline that comes first wins.
func TestHelloTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, stop := servePipe(t, func(conn *websocket.Conn) {
			expect(t, conn, protocol.TypeHello)
			closeCode(conn)
		})
		defer stop()
		start := time.Now()
		_, err := client.Dial(t.Context(), "ws://wsrc.test/", client.WithNetDialContext(l.dial), client.WithRequestTimeout(5*time.Second))
		if !errors.Is(err, client.ErrTimeout) || time.Since(start) != 5*time.Second {
			t.Errorf("Dial error %v after %v, want ErrTimeout after 5s", err, time.Since(start))
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		start = time.Now()
		_, err = client.Dial(ctx, "ws://wsrc.test/", client.WithNetDialContext(l.dial))
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) != time.Second {
			t.Errorf("Dial error %v after %v, want DeadlineExceeded after 1s", err, time.Since(start))
		}
	})
}

// Close does not wait for ever for a server that ignores the close frame.
func TestCloseUnresponsiveServer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		l, stop := servePipe(t, func(conn *websocket.Conn) {
			greet(t, conn)
			<-release // reads nothing more: the close frame is never taken
		})
		defer stop()
		c, err := client.Dial(t.Context(), "ws://wsrc.test/", client.WithNetDialContext(l.dial))
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		c.Close()
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("Close took %v", d)
		}
		close(release)
	})
}
