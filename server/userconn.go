package server

import (
	"errors"
	"fmt"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsrc-go/wsrc/protocol"
)

// userConn is one user connection (pySim-shell, the wsrc CLI, ...).
type userConn struct {
	c *conn

	// Owned by the user's goroutine:
	card *cardConn // the selected card; nil when none

	// turn is a token that orders everything written to the user: the
	// user's goroutine takes it before handling each message and gives it
	// back when done, except for a relayed request, whose reply (written
	// by the card's goroutine, or an error from the timeout or the card's
	// end) gives it back through done. So there is at most one request in
	// flight and replies go out in the order of the requests, while the
	// user's goroutine need not wake up for the reply. The value is true
	// when the request found its card gone.
	turn chan bool
}

// done ends the request in flight; lost says that its card is gone.
func (u *userConn) done(lost bool) { u.turn <- lost }

// takeTurn waits for the previous request, if any, to be answered. A
// client that does not wait for replies (pySim's never do that) blocks
// here; the keepalive is paused meanwhile, since no pong can be read.
func (u *userConn) takeTurn() {
	var lost bool
	select {
	case lost = <-u.turn:
	default:
		u.c.setBusy(true)
		lost = <-u.turn
		u.c.setBusy(false)
	}
	if lost {
		u.card = nil
	}
}

// Error texts users get for requests in the wrong state.
const (
	errNoCard       = "no card selected; send select_card first"
	errAlreadyAssoc = "a card is already selected on this connection; close the connection to release it before selecting another"
	// errWithdrawn answers the user's next request (or the one in
	// flight) after a reload of the accounts took its card away.
	errWithdrawn = "access to this card was withdrawn by the server's operator; select another card"
)

// userHandshake runs a user connection's hello. It returns the
// steady-state loop, or nil when the connection has ended.
func (s *Server) userHandshake(c *conn) func() {
	if _, ok := c.readHello(protocol.ClientUser); !ok {
		return nil
	}
	if c.write(protocol.HelloAck{}) != nil {
		return nil
	}
	c.startKeepalive()
	u := &userConn{c: c, turn: make(chan bool, 1)}
	u.turn <- false
	return func() {
		u.serve()
		u.leave()
	}
}

// serve reads the user's requests until the connection ends.
func (u *userConn) serve() {
	c := u.c
	for {
		m, err := c.next()
		if err != nil && !recoverable(err) {
			c.log().Info("user connection ended", "reason", c.readFailed(err))
			return
		}
		u.takeTurn()
		if !c.spend() {
			closed := c.rateRefused()
			u.done(false)
			if closed {
				return
			}
			continue
		}
		if err != nil {
			c.problem(ProblemBadMessage)
			c.sendError("%s", describeBad(err))
			u.done(false)
			continue
		}
		inFlight := false
		switch mm := m.(type) {
		case protocol.ListCards:
			u.listCards(mm)
		case protocol.SelectCard:
			u.selectCard(mm)
		case protocol.CAPDU:
			inFlight = u.relay(m, protocol.TypeRAPDU) // m, not mm: no new interface value
		case protocol.ResetReq:
			inFlight = u.relay(m, protocol.TypeResetResp)
		case protocol.Hello:
			c.problem(ProblemUnexpected)
			c.sendError("duplicate hello: this connection has already said hello")
		case protocol.Error:
			// Never answered, so that two peers cannot trade errors forever.
			c.log().Info("user sent an error", "message", mm.Message)
		default:
			c.problem(ProblemUnexpected)
			c.sendError("unexpected %s from a user: the user port accepts list_cards, select_card, c_apdu and reset_req", m.MsgType())
		}
		if !inFlight {
			u.done(false)
		}
	}
}

// listCards answers list_cards, narrowed by its filter (our extension).
func (u *userConn) listCards(q protocol.ListCards) {
	c := u.c
	if q.IDType != "" {
		if q.IDType = identityKey(q.IDType); q.IDType == "" {
			c.problem(ProblemBadMessage)
			c.sendError("list_cards: unknown id_type (use one of ATR, EID, ICCID, IMSI)")
			return
		}
	}
	cards, total := c.srv.hub.list(c.who(), u.seesAddr(), q)
	ack := protocol.ListCardsAck{Cards: cards}
	if q.Filtered() {
		ack.Total = total
	}
	_ = c.write(ack)
}

// seesAddr reports whether the user may see the agents' addresses: an
// admin, or anyone on an open port configured to show them.
func (u *userConn) seesAddr() bool {
	if who := u.c.who(); who.Principal != nil {
		return who.Admin
	}
	return u.c.srv.cfg.ShowRemoteAddr
}

// leave releases the selected card when the user goes, once the
// request in flight (if any) has been answered or has timed out: the card
// must not be handed to another user while it may still answer.
func (u *userConn) leave() {
	u.takeTurn()
	if u.card != nil {
		u.card.release(u)
		u.card = nil
	}
}

// selectCard associates the user with the card that matches m.
func (u *userConn) selectCard(m protocol.SelectCard) {
	c := u.c
	key := identityKey(m.IDType)
	if key == "" {
		c.problem(ProblemBadMessage)
		c.sendError("select_card: unknown id_type %q (use one of ATR, EID, ICCID, IMSI)", m.IDType)
		return
	}
	if m.IDStr == "" {
		c.problem(ProblemBadMessage)
		c.sendError("select_card: id_str is empty")
		return
	}
	if u.card != nil {
		u.card.mu.Lock()
		gone := u.card.gone != "" || u.card.user != u // disconnected, or withdrawn
		u.card.mu.Unlock()
		if !gone {
			c.problem(ProblemUnexpected)
			c.sendError(errAlreadyAssoc)
			return
		}
		u.card = nil
	}
	cc, err := c.srv.hub.find(key, m.IDStr, c.who())
	if err == nil {
		err = cc.associate(u, key, m.IDStr)
	}
	if err != nil {
		c.problem(ProblemSelect)
		c.sendError("%s", err)
		return
	}
	u.card = cc
	c.srv.hub.mu.Lock()
	ids := cc.id.identities()
	c.srv.hub.mu.Unlock()
	c.log().Info("card selected", "identities", ids, "card_remote", cc.c.remote)
	_ = c.write(protocol.SelectCardAck{Identities: ids})
}

// relay sends m (c_apdu or reset_req) to the selected card, whose reply
// (of type want) goes to the user from the card's goroutine. It returns
// true when the request is in flight (the turn passes to it).
func (u *userConn) relay(m protocol.Message, want string) bool {
	cc := u.card
	if cc == nil {
		u.c.problem(ProblemUnexpected)
		u.c.sendError(errNoCard)
		return false
	}
	if err := cc.send(u, m, want); err != nil {
		u.card = nil
		u.c.sendError("%s", err)
		return false
	}
	return true
}

// readHello reads a connection's first message, which must be a hello
// with client type want, within HelloTimeout. On any other outcome the
// connection is closed with a reason and ok is false.
func (c *conn) readHello(want string) (h protocol.Hello, ok bool) {
	defer func() {
		if !ok {
			c.problem(ProblemHello)
		}
	}()
	cfg := &c.srv.cfg
	c.setReadDeadline(time.Now().Add(cfg.HelloTimeout))
	m, err := c.next()
	expect := `expected {"msg_type": "hello", "client_type": "user"}`
	if want == protocol.ClientCard {
		expect = `expected {"msg_type": "hello", "client_type": "card", "atr": "<hex>"}`
	}
	var big errTooBig
	switch {
	case err == nil:
	case isTimeout(err):
		msg := fmt.Sprintf("no hello within %v", cfg.HelloTimeout)
		c.fail(websocket.ClosePolicyViolation, msg, msg+"; "+expect)
		return h, false
	case errors.As(err, &big) || !recoverable(err):
		c.readFailed(err)
		return h, false
	default:
		c.fail(websocket.CloseProtocolError, "invalid hello", "invalid first message: "+describeBad(err)+"; "+expect)
		return h, false
	}
	h, isHello := m.(protocol.Hello)
	switch {
	case !isHello:
		msg := fmt.Sprintf("%s before hello", m.MsgType())
		c.fail(websocket.CloseProtocolError, msg, msg+"; "+expect)
		return h, false
	case h.ClientType != want:
		other := map[string]string{protocol.ClientCard: "card agents connect to the card port", protocol.ClientUser: "users connect to the user port"}[h.ClientType]
		if other == "" {
			other = `client_type is "card" or "user"`
		}
		msg := fmt.Sprintf("wrong client_type %q: this is the %s port", h.ClientType, want)
		c.fail(websocket.ClosePolicyViolation, msg, msg+" ("+other+")")
		return h, false
	case want == protocol.ClientCard && checkCardHello(h) != "":
		msg := "invalid hello: " + checkCardHello(h)
		c.fail(websocket.CloseProtocolError, msg, msg+"; "+expect)
		return h, false
	}
	c.setReadDeadline(time.Time{})
	return h, true
}
