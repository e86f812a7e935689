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
	card    *cardConn   // the selected card; nil when none
	timer   *time.Timer // request timeout, reused (see await)
	timerOn bool        // timer is armed and has not been received from

	// reply receives the answer to the one outstanding request; sent to
	// by the card's goroutine (or its end), received by the user's.
	reply chan reply
}

// Error texts users get for requests in the wrong state.
const (
	errNoCard       = "no card selected; send select_card first"
	errAlreadyAssoc = "a card is already selected on this connection; close the connection to release it before selecting another"
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
	u := &userConn{c: c, reply: make(chan reply, 1)}
	return func() {
		u.serve()
		u.leave()
	}
}

// serve reads the user's requests until the connection ends.
func (u *userConn) serve() {
	c, s := u.c, u.c.srv
	for {
		m, err := c.next()
		if err != nil {
			if recoverable(err) {
				c.sendError("%s", describeBad(err))
				continue
			}
			c.log().Info("user connection ended", "reason", c.readFailed(err))
			return
		}
		switch mm := m.(type) {
		case protocol.ListCards:
			_ = c.write(protocol.ListCardsAck{Cards: s.hub.list(s.cfg.ShowRemoteAddr)})
		case protocol.SelectCard:
			u.selectCard(mm)
		case protocol.CAPDU:
			u.relay(m, protocol.TypeRAPDU) // m, not mm: no new interface value
		case protocol.ResetReq:
			u.relay(m, protocol.TypeResetResp)
		case protocol.Hello:
			c.sendError("duplicate hello: this connection has already said hello")
		case protocol.Error:
			// Never answered, so that two peers cannot trade errors forever.
			c.log().Info("user sent an error", "message", mm.Message)
		default:
			c.sendError("unexpected %s from a user: the user port accepts list_cards, select_card, c_apdu and reset_req", m.MsgType())
		}
	}
}

// leave releases the selected card when the user goes.
func (u *userConn) leave() {
	if u.timer != nil {
		u.timer.Stop()
	}
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
		c.sendError("select_card: unknown id_type %q (use one of ATR, EID, ICCID, IMSI)", m.IDType)
		return
	}
	if m.IDStr == "" {
		c.sendError("select_card: id_str is empty")
		return
	}
	if u.card != nil {
		u.card.mu.Lock()
		gone := u.card.gone != ""
		u.card.mu.Unlock()
		if !gone {
			c.sendError(errAlreadyAssoc)
			return
		}
		u.card = nil
	}
	cc, why := c.srv.hub.find(key, m.IDStr)
	if cc != nil {
		why = cc.associate(u, key, m.IDStr)
	}
	if why != "" {
		c.sendError("%s", why)
		return
	}
	u.card = cc
	c.srv.hub.mu.Lock()
	ids := cc.id.identities()
	c.srv.hub.mu.Unlock()
	c.log().Info("card selected", "identities", ids, "card_remote", cc.c.remote)
	_ = c.write(protocol.SelectCardAck{Identities: ids})
}

// relay sends m (c_apdu or reset_req) to the selected card and the reply
// (of type want) back to the user.
func (u *userConn) relay(m protocol.Message, want string) {
	c := u.c
	cc := u.card
	if cc == nil {
		c.sendError(errNoCard)
		return
	}
	if why := cc.request(u, want); why != "" {
		u.card = nil
		c.sendError("%s", why)
		return
	}
	c.setBusy(true)
	// A failed write closes the card connection; its goroutine's end
	// then tells us through u.reply.
	_ = cc.c.write(m)
	r := u.await(cc, m)
	c.setBusy(false)
	if r.lost {
		u.card = nil
	}
	if r.msg == nil {
		c.sendError("%s", r.err)
		return
	}
	_ = c.write(r.msg)
}

// await waits for the reply to the request just sent to cc, at most
// RequestTimeout. A card that does not answer in time is disconnected.
//
// The timer is not reset for every request (that would cost two timer
// operations per APDU): it keeps running, and when it fires early for a
// request that started later, it is re-armed for the time left.
func (u *userConn) await(cc *cardConn, m protocol.Message) reply {
	d := u.c.srv.cfg.RequestTimeout
	deadline := time.Now().Add(d)
	if u.timer == nil {
		u.timer = time.NewTimer(d)
	} else if !u.timerOn {
		u.timer.Reset(d)
	}
	u.timerOn = true
	for {
		select {
		case r := <-u.reply:
			return r
		case now := <-u.timer.C:
			u.timerOn = false
			if left := deadline.Sub(now); left > 0 {
				u.timer.Reset(left)
				u.timerOn = true
				continue
			}
		}
		break
	}
	if !cc.cancel(u) {
		return <-u.reply // the reply came just in time
	}
	msg := fmt.Sprintf("no reply to %s within %v", m.MsgType(), d)
	cc.c.log().Warn("card agent did not answer in time; disconnecting it", "msg_type", m.MsgType(), "timeout", d)
	cc.c.sendError("%s; closing the connection", msg)
	cc.c.closeNow(websocket.ClosePolicyViolation, msg)
	return reply{err: "card disconnected: " + msg, lost: true}
}

// readHello reads a connection's first message, which must be a hello
// with client type want, within HelloTimeout. On any other outcome the
// connection is closed with a reason and ok is false.
func (c *conn) readHello(want string) (h protocol.Hello, ok bool) {
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
	case want == protocol.ClientCard && len(h.ATR) == 0:
		msg := "invalid hello: empty atr"
		c.fail(websocket.CloseProtocolError, msg, msg+"; "+expect)
		return h, false
	}
	c.setReadDeadline(time.Time{})
	return h, true
}
