package server

import (
	"errors"
	"sync"

	"github.com/gorilla/websocket"

	"github.com/wsrc-go/wsrc/internal/auth"
	"github.com/wsrc-go/wsrc/protocol"
)

// Rechecking: when the accounts behind Config.Auth change (wsrc-server
// reloads its configuration on SIGHUP), Recheck judges every open
// connection again by the credential it was admitted with, so that a
// revoked token or a narrowed rule takes effect at once, not only for
// new connections.
//
// How it stays safe against connections that are busy meanwhile:
//
//   - Each connection's rights are an atomic pointer (conn.rights), read
//     afresh by every list_cards, select_card and identification. Recheck
//     replaces them first, for every connection, then looks at the cards.
//   - The two places that bind a card to rights — a card becoming ready
//     (cardConn.identify) and a user selecting it (cardConn.associate) —
//     read the rights with the card's lock held, and Recheck checks each
//     card with that lock held: whichever comes first, the other sees the
//     new rights.
//   - A connection authenticated with the old accounts but registered
//     after Recheck took its list is caught by register (Server.authGen)
//     and rechecked by its own accept (recheckLate).
//   - A user's card is never handed on while a request of its is in
//     flight: the card is withdrawn when the reply (or the card's end)
//     comes, and the user then gets errWithdrawn instead of the reply.
//   - Revoked connections are closed as others are (an error, then a
//     close frame, then the peer's answer or closeGrace): their own
//     goroutines end them and release what they hold. The writes are
//     made concurrently, a few at a time, so that one slow peer does not
//     hold up the others; Recheck waits for them.

// Rechecker is an Authenticator that can judge open connections again
// after its accounts changed: RecheckUser and RecheckAgent get the
// Principal a connection has (nil for an anonymous peer of an open port)
// and return its current rights (nil, nil: the port is open, the peer
// stays anonymous), or an error (wrapping auth.ErrRevoked) when its
// credential is no longer accepted. They must be quick and need no
// secret: they run for every connection. *auth.Store implements it.
type Rechecker interface {
	Authenticator
	RecheckUser(p *auth.Principal) (*auth.Principal, error)
	RecheckAgent(p *auth.Principal) (*auth.Principal, error)
}

// ErrNoRechecker is returned by Recheck when Config.Auth is not a
// Rechecker.
var ErrNoRechecker = errors.New("the server's authenticator cannot recheck open connections")

// RecheckResult says what Recheck did.
type RecheckResult struct {
	Checked   int // connections judged again
	Revoked   int // of which closed: credentials no longer accepted
	Withdrawn int // cards taken from users whose rules no longer allow them
	Refused   int // card connections closed: their agent's rules no longer allow the card
}

// Texts of what Recheck sends: error messages and close reasons (1008).
const (
	errRevoked       = "credentials revoked by the server's operator; this connection is closed"
	closeRevoked     = "credentials revoked by the server's operator"
	errNowRequired   = "this port now requires credentials (the server's operator configured accounts); reconnect with them"
	closeNowRequired = "credentials now required"
	cardGoneRevoked  = "the card agent's credentials were revoked by the server's operator"
	cardGoneRequired = "the card port now requires credentials, and the card agent had none"
	cardGoneNotAllow = "its agent may no longer use this card (server configuration)"
)

// revokeParallel bounds the revoked connections written to at once.
const revokeParallel = 16

// Recheck applies the current accounts of Config.Auth (which must be a
// Rechecker) to the connections already open, as if each were admitted
// again now with the credential it was admitted with:
//
//   - A connection whose credential is no longer accepted (account
//     removed, token removed, password changed; or an anonymous one on a
//     port that now requires credentials) gets an error and is closed
//     with 1008 "credentials revoked by the server's operator". A user's
//     card is released (once a request in flight is answered); an
//     agent's card leaves the list, and a user on it gets "card
//     disconnected: …" as when an agent goes.
//   - Any other connection takes its new rights at once: list_cards
//     follows them; a user whose card they no longer allow loses it (its
//     next request, or the one in flight, is answered with an error,
//     and it may select another card); an agent whose card they no longer
//     allow is closed with 1008 "card not allowed for this agent".
//
// With Config.Auth nil the ports are open and nothing changes. Recheck is
// safe to call at any time, from any goroutine; it returns once the
// revoked connections have been sent their close frames.
func (s *Server) Recheck() (RecheckResult, error) {
	var res RecheckResult
	if s.cfg.Auth == nil {
		return res, nil
	}
	rc, ok := s.cfg.Auth.(Rechecker)
	if !ok {
		return res, ErrNoRechecker
	}
	s.recheckMu.Lock()
	s.mu.Lock()
	s.authGen.Add(1)
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	var bye []farewell
	for _, c := range conns {
		if c.revoked.Load() {
			continue // closing after an earlier recheck
		}
		res.Checked++
		if r, ok := c.recheck(rc); !ok {
			bye = append(bye, r.farewell())
			res.Revoked++
		}
	}
	for _, cc := range s.hubCards() {
		switch v, f := cc.recheck(); v {
		case verdictRefused:
			res.Refused++
			bye = append(bye, f)
		case verdictWithdrawn:
			res.Withdrawn++
		}
	}
	s.recheckMu.Unlock()

	sem := make(chan struct{}, revokeParallel)
	var wg sync.WaitGroup
	for _, f := range bye {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			f.send()
		})
	}
	wg.Wait()
	return res, nil
}

// recheckLate rechecks c, which was authenticated with accounts that a
// Recheck has replaced since and may not have been seen by it; it is
// closed at once if revoked. Called by c's goroutine before its
// handshake.
func (s *Server) recheckLate(c *conn) {
	rc, ok := s.cfg.Auth.(Rechecker)
	if !ok {
		return
	}
	s.recheckMu.Lock()
	r, ok := c.recheck(rc)
	s.recheckMu.Unlock()
	if !ok {
		r.farewell().send()
	}
}

// recheck asks rc about c's rights and stores the new ones. When they
// are revoked, c is marked so (with no rights while it closes) and ok is
// false: the caller closes it with r. recheckMu must be held.
func (c *conn) recheck(rc Rechecker) (r revocation, ok bool) {
	old := c.rights.Load()
	var p *auth.Principal
	var err error
	if c.role == roleCard {
		p, err = rc.RecheckAgent(old)
	} else {
		p, err = rc.RecheckUser(old)
	}
	if err == nil {
		c.rights.Store(p)
		return r, true
	}
	if !c.revoked.CompareAndSwap(false, true) {
		return r, true // being closed already
	}
	c.rights.Store(&auth.Principal{Name: c.name}) // may use nothing
	return revocation{c: c, err: err, credential: old.Credential()}, false
}

// revocation is a connection to close, and why.
type revocation struct {
	c          *conn
	err        error  // from the Rechecker, for the log (never holds a secret)
	credential string // what it was admitted with (auth.Principal.Credential)
}

// farewell logs the revocation and returns the connection's farewell.
func (r revocation) farewell() farewell {
	c := r.c
	f := farewell{c: c, msg: errRevoked, reason: closeRevoked}
	if c.name == "" {
		f.msg, f.reason = errNowRequired, closeNowRequired
		r.credential = "none (open port)"
	}
	c.log().Warn("credentials no longer accepted after the accounts changed; closing the connection",
		"credential", r.credential, "err", r.err)
	c.srv.obs.Refused(Refusal{Port: c.role, Remote: c.addr, Name: c.name, Reason: RefusedRevoked})
	return f
}

// farewell is the end of a connection that Recheck closes: an error
// message, then close 1008. (A card agent's card has left the list
// already, or never gets there: its identification fails once the close
// frame is out.)
type farewell struct {
	c           *conn
	msg, reason string
}

// send says farewell; it takes at most a write timeout and closeGrace.
func (f farewell) send() {
	f.c.sendError("%s", f.msg)
	f.c.closeGently(websocket.ClosePolicyViolation, f.reason)
}

// hubCards returns the listed cards.
func (s *Server) hubCards() []*cardConn {
	s.hub.mu.Lock()
	defer s.hub.mu.Unlock()
	return append([]*cardConn(nil), s.hub.cards...)
}

// cardVerdict is what a recheck did to one card.
type cardVerdict int

const (
	verdictKept      cardVerdict = iota
	verdictWithdrawn             // taken from its user
	verdictRefused               // closed: its agent may no longer use it
)

// recheck checks cc against its agent's and its user's current rights,
// after Recheck has replaced them. The card of a revoked agent leaves
// the list, as does a card its agent may no longer use (the verdict is
// then verdictRefused, with the agent's farewell); a card its user may
// no longer use is withdrawn from the user. recheckMu must be held.
func (cc *cardConn) recheck() (cardVerdict, farewell) {
	c := cc.c
	if c.revoked.Load() {
		why := cardGoneRevoked
		if c.name == "" {
			why = cardGoneRequired
		}
		cc.end(why)
		return verdictKept, farewell{}
	}
	h := &cc.srv().hub
	cc.mu.Lock()
	if cc.gone != "" {
		cc.mu.Unlock()
		return verdictKept, farewell{}
	}
	h.mu.Lock()
	// A card still being identified is checked when it becomes ready.
	agentOK := cc.state == protocol.StateInit || c.who().mayUse(cc)
	ids := cc.id.identities()
	h.mu.Unlock()
	if !agentOK {
		cc.mu.Unlock()
		c.srv.obs.Refused(Refusal{Port: roleCard, Remote: c.addr, Name: c.name, Reason: RefusedCard})
		c.log().Warn("card no longer allowed by the agent's rules after the accounts changed; closing its connection", "identities", ids)
		cc.end(cardGoneNotAllow)
		return verdictRefused, farewell{c: c, msg: cardNotAllowed(c.name, ids, true), reason: errCardNotAllowed}
	}
	u := cc.user
	if u == nil || cc.withdrawn || cc.allows(u) {
		cc.mu.Unlock()
		return verdictKept, farewell{}
	}
	if cc.pending.from != nil {
		cc.withdrawn = true // complete finishes it
	} else {
		cc.disassociate() // the user learns at its next request (send)
	}
	cc.mu.Unlock()
	if u.c.revoked.Load() {
		return verdictKept, farewell{} // released for a user that is closing: not a withdrawal
	}
	c.srv.obs.Refused(Refusal{Port: roleUser, Remote: u.c.addr, Name: u.c.name, Reason: RefusedWithdrawn})
	u.c.log().Info("card withdrawn: the user's rules no longer allow it after the accounts changed", "identities", ids)
	return verdictWithdrawn, farewell{}
}
