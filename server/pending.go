package server

import (
	"net"
	"net/http"

	"github.com/wsrc-go/wsrc/internal/auth"
)

// pending tracks a port's connections that are not WebSocket
// connections yet: in the TLS handshake, sending the upgrade request, or
// kept alive after an answer that was not an upgrade. The HTTP server's
// timeouts bound how long each lives (server/daemon sets them to the
// header timeout); this bounds how many there are, per client and per
// port, so that they cannot use up the file descriptors the WebSockets
// need. Guarded by Server.mu.
type pending struct {
	conns   map[net.Conn]string // admitted connections and their per-address key
	perAddr map[string]int      // admitted connections per key ("" not counted)
}

// ConnState returns the http.Server.ConnState hook for the listener of
// role's port ("user" or "card"; use with UserHandler or CardHandler). A
// new connection over MaxPending for the port, or over MaxConnsPerAddr
// from its client, is closed at once; the count of a connection ends
// when it is upgraded (hijacked) or closed. Loopback clients and trusted
// proxies are not counted per address, as for the WebSockets.
func (s *Server) ConnState(role string) func(net.Conn, http.ConnState) {
	p := &s.pendingUser
	if role == roleCard {
		p = &s.pendingCard
	}
	return func(c net.Conn, st http.ConnState) {
		switch st {
		case http.StateNew:
			if why := s.admitPending(p, c, s.pendingKey(c)); why != "" {
				s.obs.Refused(Refusal{Port: role, Remote: c.RemoteAddr().String(), Reason: RefusedPending})
				s.log.Debug("connection closed before its request", "port", role, "remote", c.RemoteAddr().String(), "reason", why)
				c.Close()
			}
		case http.StateHijacked, http.StateClosed:
			s.releasePending(p, c)
		}
	}
}

// pendingKey is the per-address key of a connection not yet upgraded,
// "" when it is not counted per address.
func (s *Server) pendingKey(c net.Conn) string {
	remote := c.RemoteAddr().String()
	if s.cfg.MaxConnsPerAddr <= 0 || auth.IsLoopback(remote) || s.cfg.TrustedProxies.Trusts(remote) {
		return ""
	}
	return auth.ClientKey(remote)
}

// admitPending counts a new connection, or says why it is refused.
func (s *Server) admitPending(p *pending, c net.Conn, key string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case len(p.conns) >= s.cfg.MaxPending:
		return "too many connections without a WebSocket on this port"
	case key != "" && p.perAddr[key] >= s.cfg.MaxConnsPerAddr:
		return "too many connections without a WebSocket from this address"
	}
	if p.conns == nil {
		p.conns, p.perAddr = make(map[net.Conn]string), make(map[string]int)
	}
	p.conns[c] = key
	if key != "" {
		p.perAddr[key]++
	}
	return ""
}

// releasePending forgets c, if it was admitted.
func (s *Server) releasePending(p *pending, c net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	key, ok := p.conns[c]
	if !ok {
		return
	}
	delete(p.conns, c)
	if key != "" {
		if p.perAddr[key]--; p.perAddr[key] <= 0 {
			delete(p.perAddr, key)
		}
	}
}

// Pending returns the connections not yet upgraded on each port.
func (s *Server) Pending() (users, cards int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pendingUser.conns), len(s.pendingCard.conns)
}
