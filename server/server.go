// Package server is the WSRC relay: the hub between card agents and users.
//
// Card agents connect to the card port, say hello with their card's ATR
// and are identified by the server (pySim's sequence: SELECT ISD-R,
// GET EID, SELECT MF, SELECT EF.ICCID, READ BINARY). Users connect to the
// user port, list the cards, select one by any of its identities and then
// exchange APDUs and resets with it, one at a time, until they leave. The
// wire format is package protocol; docs/protocol.md is the specification
// this package implements.
//
// Data flow of one APDU:
//
//	user ──c_apdu──► user's goroutine ──c_apdu──► card agent
//	user ◄──r_apdu── card's goroutine ◄──r_apdu── card agent
//
// Concurrency: every connection has exactly one goroutine reading it: a
// first one for the handshake (hello, and a card's identification), then
// a fresh one with a small stack for the steady state, so an idle
// connection costs little memory. The HTTP handler returns right after
// the upgrade, so net/http's per-request state is not kept alive either.
// The card's goroutine reads the agent continuously and writes each reply
// straight to the waiting user; a one-slot token per user keeps the
// user's requests one at a time and its replies in order, without waking
// the user's goroutine for each reply. Writes are serialised by a mutex
// per connection and bounded by a write deadline, so a slow peer delays
// only the party talking to it and is disconnected when the deadline
// passes. Keepalive pings and request timeouts run on timers, not
// goroutines.
//
// The server never listens: cmd/wsrc-server (or a test) creates the
// listeners and serves UserHandler and CardHandler on them, which leaves
// TLS, socket activation and authentication to the caller. Because
// http.Server.Shutdown does not track hijacked connections, the server
// keeps its own registry and Shutdown closes and waits for each of them.
package server

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsrc-go/wsrc/protocol"
)

// Config holds the server's limits and timeouts. The zero value of each
// field selects its default.
type Config struct {
	// HelloTimeout bounds the wait for a connection's first message
	// (hello). Default 10 s.
	HelloTimeout time.Duration
	// IdentifyTimeout bounds a card's whole identification, from
	// hello_ack to state_notification ready. Default 30 s, as pySim.
	IdentifyTimeout time.Duration
	// RequestTimeout bounds each relayed c_apdu or reset_req, from the
	// server's write to the card agent's reply. A card agent that does
	// not answer in time is disconnected. Default 120 s: long enough for
	// eUICC crypto (profile download steps) on slow cards.
	RequestTimeout time.Duration
	// WriteTimeout bounds each write to a peer; a peer that does not take
	// a message within it is disconnected. Default 10 s.
	WriteTimeout time.Duration
	// PingInterval is the keepalive period: a ping is sent to each idle
	// connection this often. Default 20 s (as pySim's websockets); a
	// negative value disables keepalive.
	PingInterval time.Duration
	// PongTimeout is how long a ping may go unanswered before the
	// connection is considered dead. Default 20 s.
	PongTimeout time.Duration
	// MaxFrameSize is the largest message accepted; a bigger one ends
	// the connection with close code 1009. Default protocol.MaxFrameSize.
	MaxFrameSize int
	// MaxCards and MaxUsers bound the connections on each port; further
	// upgrades are refused with HTTP 503. Default 10000 each.
	MaxCards, MaxUsers int
	// ShowRemoteAddr makes list_cards_ack carry each card agent's real
	// network address, as pySim does. By default the address is not
	// revealed to users: remote_addr is ["0.0.0.0", 0].
	ShowRemoteAddr bool
}

// Defaults for Config.
const (
	DefaultHelloTimeout    = 10 * time.Second
	DefaultIdentifyTimeout = 30 * time.Second
	DefaultRequestTimeout  = 120 * time.Second
	DefaultWriteTimeout    = 10 * time.Second
	DefaultPingInterval    = 20 * time.Second
	DefaultPongTimeout     = 20 * time.Second
	DefaultMaxConns        = 10000
)

// closeGrace bounds how long a closing connection waits for the peer's
// answering close frame before the TCP connection is closed.
const closeGrace = time.Second

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.HelloTimeout, DefaultHelloTimeout)
	def(&c.IdentifyTimeout, DefaultIdentifyTimeout)
	def(&c.RequestTimeout, DefaultRequestTimeout)
	def(&c.WriteTimeout, DefaultWriteTimeout)
	if c.PingInterval == 0 {
		c.PingInterval = DefaultPingInterval
	}
	def(&c.PongTimeout, DefaultPongTimeout)
	if c.MaxFrameSize <= 0 {
		c.MaxFrameSize = protocol.MaxFrameSize
	}
	if c.MaxCards <= 0 {
		c.MaxCards = DefaultMaxConns
	}
	if c.MaxUsers <= 0 {
		c.MaxUsers = DefaultMaxConns
	}
}

// Server is the relay. Create it with New; serve UserHandler and
// CardHandler on listeners of your own; end it with Shutdown.
type Server struct {
	cfg      Config // read-only after New
	log      *slog.Logger
	upgrader websocket.Upgrader
	hub      hub // the cards users can see and select

	mu      sync.Mutex         // guards the fields below
	conns   map[*conn]struct{} // every upgraded connection
	nCards  int                // card connections in conns
	nUsers  int                // user connections in conns
	closing bool               // set by Shutdown; no new connections
	wg      sync.WaitGroup     // one count per connection, until its goroutine ends
}

// New returns a Server with cfg (defaults filled in) that logs to logger
// (nil: discard).
func New(cfg Config, logger *slog.Logger) *Server {
	cfg.setDefaults()
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := &Server{cfg: cfg, log: logger, conns: make(map[*conn]struct{})}
	s.upgrader = websocket.Upgrader{
		// Small per-connection buffers: an idle card connection must stay
		// within a few KiB. The read buffer is the connection's own (a
		// bigger message is read through it in pieces); write buffers
		// are lent from a pool for the duration of one write, so idle
		// connections hold none (at the price of one small allocation
		// per write, inside gorilla/websocket).
		ReadBufferSize:  512,
		WriteBufferSize: 1024,
		WriteBufferPool: &sync.Pool{},
		Error:           s.upgradeError,
		// The default origin check stays: WSRC peers send no Origin, and
		// a web page in a browser must not drive cards on a local server.
	}
	return s
}

// Role names used in logs and errors.
const (
	roleCard = "card"
	roleUser = "user"
)

// UserHandler returns the handler for the user port: it upgrades any path
// to a WebSocket and serves a user connection on it.
func (s *Server) UserHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.accept(w, r, roleUser) })
}

// CardHandler returns the handler for the card port: it upgrades any path
// to a WebSocket and serves a card agent connection on it.
func (s *Server) CardHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.accept(w, r, roleCard) })
}

func (s *Server) upgradeError(w http.ResponseWriter, _ *http.Request, status int, reason error) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Sec-Websocket-Version", "13")
	w.WriteHeader(status)
	io.WriteString(w, "this is a WSRC WebSocket endpoint (see docs/protocol.md): "+reason.Error()+"\n") //nolint:errcheck // best effort
}

// accept upgrades one request and starts the connection's goroutine.
func (s *Server) accept(w http.ResponseWriter, r *http.Request, role string) {
	if msg := s.admit(role); msg != "" {
		http.Error(w, msg, http.StatusServiceUnavailable)
		return
	}
	ws, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		s.release(role)
		s.log.Debug("upgrade failed", "port", role, "remote", r.RemoteAddr, "err", err)
		return
	}
	c := newConn(s, ws, role, r.RemoteAddr)
	if !s.register(c) {
		s.release(role)
		c.closeNow(websocket.CloseGoingAway, "server shutting down")
		return
	}
	handshake := s.userHandshake
	if role == roleCard {
		handshake = s.cardHandshake
	}
	go func() {
		loop := handshake(c)
		if loop == nil {
			s.finish(c)
			return
		}
		// The steady state runs on a fresh goroutine: the handshake's
		// deeper calls (identification, logging) have grown this one's
		// stack, and an idle connection should cost as little memory as
		// possible. The connection's wg count passes on to it.
		go func() {
			loop()
			s.finish(c)
		}()
	}()
}

// finish releases a connection whose goroutine is done.
func (s *Server) finish(c *conn) {
	c.ws.Close()
	s.unregister(c)
	s.wg.Done()
}

// admit reserves a connection slot for role, or says why not.
func (s *Server) admit(role string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closing:
		return "server shutting down"
	case role == roleCard && s.nCards >= s.cfg.MaxCards:
		return "too many card connections"
	case role == roleUser && s.nUsers >= s.cfg.MaxUsers:
		return "too many user connections"
	}
	if role == roleCard {
		s.nCards++
	} else {
		s.nUsers++
	}
	return ""
}

func (s *Server) release(role string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if role == roleCard {
		s.nCards--
	} else {
		s.nUsers--
	}
}

func (s *Server) register(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) unregister(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.release(c.role)
}

// Shutdown refuses new connections, sends every open connection a close
// frame (1001, "server shutting down") and waits until all of them have
// ended. When ctx ends first, the remaining connections are closed
// without further ado, waited for, and ctx's error is returned.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.closeGently(websocket.CloseGoingAway, "server shutting down")
	}
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	for c := range s.conns {
		c.ws.Close()
	}
	s.mu.Unlock()
	<-done
	return ctx.Err()
}

// Cards returns what list_cards_ack would show a user right now.
func (s *Server) Cards() []protocol.CardInfo { return s.hub.list(true) }

// remoteAddr turns an http.Request.RemoteAddr ("ip:port", "[v6]:port")
// into pySim's [ip, port].
func remoteAddr(s string) protocol.RemoteAddr {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return protocol.RemoteAddr{IP: s}
	}
	p, _ := strconv.Atoi(port)
	return protocol.RemoteAddr{IP: host, Port: p}
}
