// Package agenttest is a scripted stand-in for a WSRC server's card port,
// for testing card agents: a test accepts each WebSocket the agent opens
// and plays the server's side message by message, as pySim's server does.
//
// It is a test helper (like net/http/httptest): every wait is bounded by
// Timeout and fails the test instead of hanging it, and everything it
// starts is stopped by Close (registered with t.Cleanup).
package agenttest

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/protocol"
)

// Timeout bounds every wait of a Server or Conn method: a test that
// expects a connection or a message and gets none fails after Timeout.
var Timeout = 10 * time.Second

// Server is a fake card port on a loopback address.
type Server struct {
	t       testing.TB
	srv     *httptest.Server
	tls     bool
	conns   chan *Conn         // handler → Accept
	refused chan *http.Request // handler → Refused

	mu     sync.Mutex
	open   map[*Conn]struct{} // guarded by mu: closed by Close
	closed bool               // guarded by mu
	done   chan struct{}      // closed by Close
}

// Options change how a Server accepts agents.
type Options struct {
	// TLS, when set, makes the server a wss:// one with this
	// configuration (its Certificates, ClientAuth, ClientCAs...).
	TLS *tls.Config
	// Authorize, when set, sees every upgrade request first; a non-zero
	// status refuses it with that HTTP status (and the headers Authorize
	// set on h), as a server's authentication would. Refused requests
	// are available from Refused.
	Authorize func(r *http.Request, h http.Header) (status int)
}

// NewServer starts a fake card port on 127.0.0.1 (a free port).
func NewServer(t testing.TB) *Server {
	return NewServerWith(t, Options{})
}

// NewServerWith starts a fake card port on 127.0.0.1 with opts.
func NewServerWith(t testing.TB, opts Options) *Server {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("agenttest: listening: %v", err)
	}
	return serve(t, ln, opts)
}

// NewServerAt starts a fake card port on addr, e.g. the address of a
// Server that was closed, to test reconnection.
func NewServerAt(t testing.TB, addr string) *Server {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("agenttest: listening on %s again: %v", addr, err)
	}
	return serve(t, ln, Options{})
}

func serve(t testing.TB, ln net.Listener, opts Options) *Server {
	s := &Server{
		t:       t,
		tls:     opts.TLS != nil,
		conns:   make(chan *Conn, 16),
		refused: make(chan *http.Request, 16),
		open:    make(map[*Conn]struct{}),
		done:    make(chan struct{}),
	}
	up := websocket.Upgrader{}
	s.srv = &httptest.Server{
		Listener: ln,
		TLS:      opts.TLS,
		Config: &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if opts.Authorize != nil {
				if status := opts.Authorize(r, w.Header()); status != 0 {
					http.Error(w, http.StatusText(status), status)
					select {
					case s.refused <- r:
					default: // nobody is counting: drop
					}
					return
				}
			}
			ws, err := up.Upgrade(w, r, nil)
			if err != nil {
				return
			}
			c := &Conn{t: t, ws: ws, header: r.Header.Clone(), tls: r.TLS}
			s.mu.Lock()
			if s.closed {
				s.mu.Unlock()
				ws.Close()
				return
			}
			s.open[c] = struct{}{}
			s.mu.Unlock()
			select {
			case s.conns <- c:
			case <-s.done:
			}
		})},
	}
	if s.tls {
		// Refused handshakes are the point of some tests: not worth a log.
		s.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
		s.srv.StartTLS()
	} else {
		s.srv.Start()
	}
	t.Cleanup(s.Close)
	return s
}

// URL is the ws:// (or, with Options.TLS, wss://) URL of the card port.
func (s *Server) URL() string {
	if s.tls {
		return "wss://" + s.Addr() + "/"
	}
	return "ws://" + s.Addr() + "/"
}

// Refused returns the next upgrade request that Options.Authorize
// refused.
func (s *Server) Refused() *http.Request {
	s.t.Helper()
	select {
	case r := <-s.refused:
		return r
	case <-time.After(Timeout):
		s.t.Fatalf("agenttest: no refused request within %v", Timeout)
		return nil
	}
}

// Addr is the host:port the server listens on.
func (s *Server) Addr() string { return s.srv.Listener.Addr().String() }

// Accept returns the next WebSocket an agent opened.
func (s *Server) Accept() *Conn {
	s.t.Helper()
	select {
	case c := <-s.conns:
		return c
	case <-time.After(Timeout):
		s.t.Fatalf("agenttest: no agent connected within %v", Timeout)
		return nil
	}
}

// Close stops the server and drops every open connection without a close
// frame, as a crashed server would. It is safe to call more than once.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	close(s.done)
	for c := range s.open {
		c.ws.Close()
	}
	s.mu.Unlock()
	s.srv.Close()
}

// Conn is the server's end of one agent WebSocket.
type Conn struct {
	t      testing.TB
	ws     *websocket.Conn
	header http.Header          // of the upgrade request
	tls    *tls.ConnectionState // nil for ws://
}

// Header returns the headers of the agent's upgrade request.
func (c *Conn) Header() http.Header { return c.header }

// TLS returns the TLS state of a wss:// connection (the agent's client
// certificate is in PeerCertificates), nil for ws://.
func (c *Conn) TLS() *tls.ConnectionState { return c.tls }

// WS gives direct access to the WebSocket, for what the helpers lack.
func (c *Conn) WS() *websocket.Conn { return c.ws }

// ReadRaw returns the next data frame from the agent.
func (c *Conn) ReadRaw() []byte {
	c.t.Helper()
	c.ws.SetReadDeadline(time.Now().Add(Timeout))
	typ, data, err := c.ws.ReadMessage()
	if err != nil {
		c.t.Fatalf("agenttest: reading from agent: %v", err)
	}
	if typ != websocket.TextMessage {
		c.t.Fatalf("agenttest: agent sent a frame of type %d, want text", typ)
	}
	return data
}

// Read returns the next message from the agent, decoded.
func (c *Conn) Read() protocol.Message {
	c.t.Helper()
	data := c.ReadRaw()
	m, err := protocol.Decode(data)
	if err != nil {
		c.t.Fatalf("agenttest: agent sent %s: %v", data, err)
	}
	return m
}

// SendRaw sends one text frame as it is.
func (c *Conn) SendRaw(data []byte) {
	c.t.Helper()
	c.ws.SetWriteDeadline(time.Now().Add(Timeout))
	if err := c.ws.WriteMessage(websocket.TextMessage, data); err != nil {
		c.t.Fatalf("agenttest: sending %s: %v", data, err)
	}
}

// Send sends one message.
func (c *Conn) Send(m protocol.Message) {
	c.t.Helper()
	c.SendRaw(protocol.Encode(m))
}

// Hello reads the agent's hello, checks that it is a card's, answers
// hello_ack and returns it.
func (c *Conn) Hello() protocol.Hello {
	c.t.Helper()
	m := c.Read()
	h, ok := m.(protocol.Hello)
	if !ok {
		c.t.Fatalf("agenttest: first message is %s, want hello", m.MsgType())
	}
	if h.ClientType != protocol.ClientCard {
		c.t.Fatalf("agenttest: hello client_type %q, want %q", h.ClientType, protocol.ClientCard)
	}
	c.Send(protocol.HelloAck{})
	return h
}

// Transmit sends c_apdu and returns the agent's r_apdu; anything else
// fails the test.
func (c *Conn) Transmit(command []byte) protocol.RAPDU {
	c.t.Helper()
	c.Send(protocol.CAPDU{Command: command})
	m := c.Read()
	r, ok := m.(protocol.RAPDU)
	if !ok {
		c.t.Fatalf("agenttest: c_apdu %x answered with %#v, want r_apdu", command, m)
	}
	return r
}

// Transmitter returns the agent's card as the server sees it: every
// Transmit is one c_apdu/r_apdu exchange (the response comes back as
// data||SW1SW2). With card.Identify it identifies the card as the server
// does.
func (c *Conn) Transmitter() card.Transmitter { return connTransmitter{c} }

type connTransmitter struct{ c *Conn }

func (t connTransmitter) Transmit(ctx context.Context, cmd []byte) ([]byte, error) {
	t.c.t.Helper()
	r := t.c.Transmit(cmd)
	return r.Bytes(), nil
}

// ExpectClose reads until the agent closes the connection and returns the
// close code (websocket.CloseAbnormalClosure, 1006, when the TCP
// connection ended without a close frame). Data frames still arriving are
// returned in order in msgs.
func (c *Conn) ExpectClose() (code int, msgs [][]byte) {
	c.t.Helper()
	c.ws.SetReadDeadline(time.Now().Add(Timeout))
	for {
		_, data, err := c.ws.ReadMessage()
		if err == nil {
			msgs = append(msgs, data)
			continue
		}
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			c.ws.Close()
			return ce.Code, msgs
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			c.t.Fatalf("agenttest: agent did not close within %v", Timeout)
		}
		c.ws.Close()
		return websocket.CloseAbnormalClosure, msgs
	}
}

// Close drops the connection without a close frame.
func (c *Conn) Close() { c.ws.Close() }
