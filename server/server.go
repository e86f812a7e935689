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
// Access: every upgrade request is authenticated (Config.Auth, usually an
// *auth.Store) before the WebSocket exists; a request without valid
// credentials gets 401 and never reaches hello, and an address that keeps
// failing gets 429 for a while. The Principal found travels with the
// connection: a user lists and selects only the cards its rules allow
// (admins all, with the agents' addresses), an agent registers only the
// cards its rules allow, under its authenticated name. A card agent that
// says hello again for the same agent name and reader replaces its old,
// stale connection at once. When the accounts change, Recheck judges the
// open connections again (recheck.go): revoked ones are closed, the
// others take their new rights at once.
//
// Limits: connections per port and per client address, message size,
// handshake time, a token bucket of messages per connection, one request
// in flight per user, a write timeout for slow peers, keepalive pings.
// The defaults are in Config; docs/security.md explains them.
//
// Watching: Config.Observer hears of connections, cards, requests,
// refusals and problems, Config.Tracer of every APDU exchange, and
// Snapshot and Stats give the current state (observe.go).
//
// The server never listens: server/daemon (wsrc-server), or a test, creates the
// listeners and serves UserHandler and CardHandler on them, which leaves
// TLS and socket activation to the caller. Because
// http.Server.Shutdown does not track hijacked connections, the server
// keeps its own registry and Shutdown closes and waits for each of them.
package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsrc-go/wsrc/internal/auth"
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
	// connection is considered dead. Default 20 s; at most PingInterval,
	// so that a dead peer is found within twice the ping interval.
	PongTimeout time.Duration
	// MaxFrameSize is the largest message accepted; a bigger one ends
	// the connection with close code 1009. Default protocol.MaxFrameSize.
	MaxFrameSize int
	// MaxCards and MaxUsers bound the connections on each port; further
	// upgrades are refused with HTTP 503. Default 10000 each.
	MaxCards, MaxUsers int
	// MaxConnsPerAddr bounds the connections on each port from one client
	// (auth.ClientKey: an IPv4 address or an IPv6 /64); further upgrades
	// get 503. Loopback clients are exempt (tests, local tools; a local
	// reverse proxy, unless it is in TrustedProxies and names its
	// clients). Default 64; negative: no limit.
	MaxConnsPerAddr int
	// MaxPending bounds the connections on each port that are not (yet)
	// WebSockets: TLS handshakes, upgrade requests, connections kept
	// alive after a refused request. Further ones are closed at once;
	// MaxConnsPerAddr applies to them too. Only with the hook of
	// ConnState installed. Default 1024.
	MaxPending int
	// TrustedProxies are reverse proxies whose X-Forwarded-For header is
	// believed: a request from one of them counts as coming from the
	// client the proxy names, for every per-client limit, the throttle
	// of failed logins, logs and the addresses admins see. Without it a
	// proxy's clients all share the proxy's address. Empty: none.
	TrustedProxies auth.Proxies
	// MessageRate and MessageBurst are a token bucket on the messages a
	// connection sends after hello (identification answers do not
	// count): MessageRate per second on average, MessageBurst at once. A
	// message over the limit is answered with an error and dropped (an
	// agent's reply to a pending request always passes); RateStrikes such
	// messages without the peer backing off (letting its bucket fill up)
	// close the connection with 1008. MessageRate 0 or negative: no limit
	// (the default of this package, for benchmarks and embedders;
	// wsrc-server sets DefaultMessageRate). Defaults for the others: 2000
	// and 100. No real card answers 1000 APDUs per second, and a user has
	// only one request in flight.
	MessageRate  float64
	MessageBurst int
	RateStrikes  int
	// ShowRemoteAddr makes list_cards_ack carry each card agent's real
	// network address, as pySim does, for anonymous users (of an open
	// user port). By default the address is not revealed: remote_addr is
	// ["0.0.0.0", 0]. Authenticated users see it when they are admins.
	ShowRemoteAddr bool

	// Auth authenticates every upgrade request; nil leaves both ports
	// open (anonymous peers, every card visible). *auth.Store implements
	// it. When it is also a Rechecker, Recheck applies a change of its
	// accounts to the connections already open.
	Auth Authenticator
	// AuthFailureBurst and AuthFailurePer configure the throttle of
	// failed authentications per port and client (see auth.Throttle):
	// that many failures, then one more per AuthFailurePer; meanwhile the
	// client's upgrade requests on that port get 429. Attempts being
	// checked count as failures until they succeed. Defaults 10 and 30 s.
	AuthFailureBurst int
	AuthFailurePer   time.Duration

	// Observer is told about connections, cards, requests and refusals;
	// Tracer gets every APDU. nil: none. See observe.go.
	Observer Observer
	Tracer   Tracer
}

// Authenticator decides who sent an upgrade request. A nil Principal
// with a nil error means the port is open: the peer is anonymous. An
// error that wraps auth.ErrNoCredentials means none were presented; any
// other error (auth.ErrBadCredentials: wrong or malformed ones) counts
// as a failure against the client's address.
type Authenticator interface {
	UserRequest(r *http.Request) (*auth.Principal, error)
	AgentRequest(r *http.Request) (*auth.Principal, error)
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
	DefaultMaxConnsPerAddr = 64
	DefaultMaxPending      = 1024
	DefaultMessageRate     = 1000 // wsrc-server's; Config's zero value is no limit
	DefaultMessageBurst    = 2000
	DefaultRateStrikes     = 100
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
	if c.MaxPending <= 0 {
		c.MaxPending = DefaultMaxPending
	}
	if c.MaxConnsPerAddr == 0 {
		c.MaxConnsPerAddr = DefaultMaxConnsPerAddr
	}
	if c.MessageRate <= 0 {
		c.MessageRate = -1 // no limit
	}
	if c.MessageBurst <= 0 {
		c.MessageBurst = DefaultMessageBurst
	}
	if c.RateStrikes <= 0 {
		c.RateStrikes = DefaultRateStrikes
	}
	if c.Observer == nil {
		c.Observer = NopObserver{}
	}
}

// Validate reports settings that contradict each other (zero values
// stand for their defaults).
func (c Config) Validate() error {
	c.setDefaults()
	var errs []error
	if c.PingInterval > 0 && c.PongTimeout > c.PingInterval {
		errs = append(errs, fmt.Errorf("pong timeout %v exceeds the ping interval %v: a dead peer would take more than twice the ping interval to notice", c.PongTimeout, c.PingInterval))
	}
	if c.MaxFrameSize < 1024 {
		errs = append(errs, fmt.Errorf("message size limit %d is too small for any APDU exchange (at least 1024)", c.MaxFrameSize))
	}
	if c.MessageRate > 0 && float64(c.MessageBurst) < 1 {
		errs = append(errs, errors.New("message burst must be at least 1"))
	}
	return errors.Join(errs...)
}

// Server is the relay. Create it with New; serve UserHandler and
// CardHandler on listeners of your own; end it with Shutdown.
type Server struct {
	cfg      Config // read-only after New
	log      *slog.Logger
	upgrader websocket.Upgrader
	hub      hub            // the cards users can see and select
	throttle *auth.Throttle // failed authentications per client
	obs      Observer       // cfg.Observer, never nil
	// conflicts are the recent cards refused as duplicates (duplicates.go)
	conflicts conflicts
	lastID    atomic.Uint64 // the last ConnEvent.ID given out

	mu      sync.Mutex         // guards the fields below
	conns   map[*conn]struct{} // every upgraded connection
	nCards  int                // card connections admitted (upgrading or in conns)
	nUsers  int                // user connections admitted
	perAddr map[string]int     // admitted connections per port and client (addrKey)
	// Connections not upgraded yet, per port (see ConnState):
	pendingUser, pendingCard pending
	closing                  bool           // set by Shutdown; no new connections
	wg                       sync.WaitGroup // one count per connection, until its goroutine ends
	// authGen counts Recheck calls; changed only with mu held (and
	// recheckMu), so that register can tell a connection that
	// authenticated before a Recheck and registered after it looked.
	authGen atomic.Uint64

	recheckMu sync.Mutex // serialises rechecks (Recheck, recheckLate)
}

// New returns a Server with cfg (defaults filled in) that logs to logger
// (nil: discard).
func New(cfg Config, logger *slog.Logger) *Server {
	cfg.setDefaults()
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := &Server{cfg: cfg, log: logger, conns: make(map[*conn]struct{}), perAddr: make(map[string]int),
		throttle: auth.NewThrottle(cfg.AuthFailureBurst, cfg.AuthFailurePer), obs: cfg.Observer}
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

// accept authenticates and upgrades one request and starts the
// connection's goroutine.
func (s *Server) accept(w http.ResponseWriter, r *http.Request, role string) {
	r.RemoteAddr = s.cfg.TrustedProxies.ClientAddr(r)
	client := auth.ClientKey(r.RemoteAddr)
	gen := s.authGen.Load() // before authenticating: see register
	who, ok := s.authenticate(w, r, role, client)
	if !ok {
		return
	}
	addrKey := ""
	if s.cfg.MaxConnsPerAddr > 0 && !auth.IsLoopback(r.RemoteAddr) {
		addrKey = role + " " + client
	}
	if msg, why := s.admit(role, addrKey); msg != "" {
		s.obs.Refused(Refusal{Port: role, Remote: r.RemoteAddr, Name: who.name(), Reason: why})
		s.log.Info("connection refused", "port", role, "remote", r.RemoteAddr, "reason", msg)
		http.Error(w, msg, http.StatusServiceUnavailable)
		return
	}
	ws, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		s.release(role, addrKey)
		s.log.Debug("upgrade failed", "port", role, "remote", r.RemoteAddr, "err", err)
		s.obs.Problem(ConnEvent{Port: role, Remote: r.RemoteAddr, Name: who.name()}, ProblemUpgrade)
		return
	}
	c := newConn(s, ws, role, r.RemoteAddr, who)
	c.addrKey, c.id = addrKey, s.lastID.Add(1)
	ok, stale := s.register(c, gen)
	if !ok {
		s.release(role, addrKey)
		c.closeNow(websocket.CloseGoingAway, "server shutting down")
		return
	}
	s.obs.Connected(c.event())
	handshake := s.userHandshake
	if role == roleCard {
		handshake = s.cardHandshake
	}
	go func() {
		if stale {
			s.recheckLate(c) // when revoked, the handshake finds c closing
		}
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

// name is the principal's name, "" for anonymous peers.
func (p principal) name() string {
	if p.Principal == nil {
		return ""
	}
	return p.Name
}

// principal is who is at the other end of a connection; a nil Principal
// is an anonymous peer of an open port.
type principal struct{ *auth.Principal }

// authenticate asks Config.Auth who sent r. When it answers with a 401
// or 429 (or nothing, for a client that has gone), ok is false.
//
// Failures are throttled per port and client (auth.Throttle): a client
// that failed too often on one port is refused there before its
// credentials are checked, and each attempt in flight holds one of its
// failures left, so that attempts sent at once cannot outrun the count.
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request, role, client string) (who principal, ok bool) {
	if s.cfg.Auth == nil {
		return principal{}, true
	}
	attempt, wait, ok := s.throttle.Begin(role + " " + client)
	if !ok {
		s.obs.Refused(Refusal{Port: role, Remote: r.RemoteAddr, Reason: RefusedThrottled})
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
		http.Error(w, "too many failed authentication attempts from this address; try again later", http.StatusTooManyRequests)
		return principal{}, false
	}
	var p *auth.Principal
	var err error
	realm := "wsrc users"
	if role == roleCard {
		realm = "wsrc card agents"
		p, err = s.cfg.Auth.AgentRequest(r)
	} else {
		p, err = s.cfg.Auth.UserRequest(r)
	}
	failed := err != nil && !errors.Is(err, auth.ErrNoCredentials) && r.Context().Err() == nil
	logIt, suppressed := attempt.End(failed)
	if err == nil {
		return principal{p}, true
	}
	if r.Context().Err() != nil {
		return principal{}, false // the client went away during the check
	}
	var f *auth.Failure
	ref := Refusal{Port: role, Remote: r.RemoteAddr, Reason: RefusedBadCredential}
	if errors.As(err, &f) {
		ref.Name = f.Name
	}
	if errors.Is(err, auth.ErrNoCredentials) {
		ref.Reason = RefusedNoCredentials
		s.log.Debug("upgrade without credentials", "port", role, "remote", r.RemoteAddr)
	} else if logIt {
		s.log.Warn("authentication failed", "port", role, "remote", r.RemoteAddr, "name", logSafe(ref.Name),
			"err", err, "failures_not_logged", suppressed)
	}
	s.obs.Refused(ref)
	for _, v := range auth.Challenge(realm) {
		w.Header().Add("WWW-Authenticate", v)
	}
	msg := "authentication required: "
	if role == roleCard {
		msg += "send the agent's token (Authorization: Bearer TOKEN, or X-WSRC-Token)"
	} else {
		msg += "send a user name and password or token (wss://NAME:SECRET@host/), or Authorization: Bearer TOKEN"
	}
	http.Error(w, msg, http.StatusUnauthorized)
	return principal{}, false
}

// logSafe shortens and quotes a peer-supplied string for the log.
func logSafe(s string) string {
	if len(s) > 64 {
		s = s[:64] + "…"
	}
	return strings.ToValidUTF8(s, "?")
}

// finish releases a connection whose goroutine is done.
func (s *Server) finish(c *conn) {
	c.over()
	c.ws.Close()
	s.unregister(c)
	s.obs.Disconnected(c.event(), c.endReason())
	s.wg.Done()
}

// admit reserves a connection slot for role (and addrKey, unless ""), or
// says why not.
func (s *Server) admit(role, addrKey string) (string, RefusalReason) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closing:
		return "server shutting down", RefusedShuttingDown
	case role == roleCard && s.nCards >= s.cfg.MaxCards:
		return "too many card connections", RefusedPortFull
	case role == roleUser && s.nUsers >= s.cfg.MaxUsers:
		return "too many user connections", RefusedPortFull
	case addrKey != "" && s.perAddr[addrKey] >= s.cfg.MaxConnsPerAddr:
		return fmt.Sprintf("too many connections from your address (the limit is %d)", s.cfg.MaxConnsPerAddr), RefusedAddrFull
	}
	if role == roleCard {
		s.nCards++
	} else {
		s.nUsers++
	}
	if addrKey != "" {
		s.perAddr[addrKey]++
	}
	return "", ""
}

func (s *Server) release(role, addrKey string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if role == roleCard {
		s.nCards--
	} else {
		s.nUsers--
	}
	if addrKey != "" {
		if s.perAddr[addrKey]--; s.perAddr[addrKey] <= 0 {
			delete(s.perAddr, addrKey)
		}
	}
}

// register lists c, unless the server is shutting down. stale says that
// the accounts changed (Recheck) after generation gen, which c was
// authenticated with, and Recheck may have missed c: the caller rechecks
// it.
func (s *Server) register(c *conn, gen uint64) (ok, stale bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false, false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true, s.authGen.Load() != gen
}

func (s *Server) unregister(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.release(c.role, c.addrKey)
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

// Ready reports whether the server accepts connections: nil, or why not
// (for a readiness check such as /readyz).
func (s *Server) Ready() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return errors.New("shutting down")
	}
	return nil
}

// Cards returns what list_cards_ack would show an admin right now.
func (s *Server) Cards() []protocol.CardInfo {
	cards, _ := s.hub.list(principal{}, true, protocol.ListCards{})
	return cards
}

// Stats are counts for a status line.
type Stats struct {
	Cards      int // card connections listed (any state)
	CardsReady int // of which ready
	CardsInUse int // of which associated with a user
	Users      int // user connections
}

// Stats returns the current counts.
func (s *Server) Stats() Stats {
	var st Stats
	s.hub.mu.Lock()
	st.Cards = len(s.hub.cards)
	for _, cc := range s.hub.cards {
		switch cc.state {
		case protocol.StateReady:
			st.CardsReady++
		case protocol.StateAssociated:
			st.CardsInUse++
		}
	}
	s.hub.mu.Unlock()
	s.mu.Lock()
	st.Users = s.nUsers
	s.mu.Unlock()
	return st
}

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
