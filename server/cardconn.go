package server

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/protocol"
)

// identify is the identification sequence; a seam for tests.
var identify = card.Identify

// cardConn is one card agent connection: one card in one reader.
type cardConn struct {
	c     *conn
	hello protocol.Hello // read-only after hello

	// Guarded by srv.hub.mu; written only while mu is held as well, so
	// holders of either lock may read them:
	state string   // protocol.StateInit, StateReady or StateAssociated
	id    identity // what users select the card by

	mu      sync.Mutex  // guards the fields below; lock order: mu, then hub.mu
	user    *userConn   // the associated user; nil when none
	pending request     // the request in flight; pending.from == nil when none
	gone    string      // why the connection ended; "" while it is up
	timer   *time.Timer // request timeout (see checkTimeout); nil until the first request
	timerOn bool        // timer is armed
}

// request is a user's c_apdu or reset_req waiting for the card's reply.
type request struct {
	from     *userConn // who asked; the reply goes there
	want     string    // the reply's msg_type: r_apdu or reset_resp
	sent     string    // the request's msg_type, for messages
	deadline time.Time // RequestTimeout after it was sent
}

// identity is what users select a card by; "" means not known.
type identity struct{ atr, eid, iccid, imsi string }

// get returns the identity with the given canonical key.
func (id *identity) get(key string) string {
	switch key {
	case protocol.IdentityATR:
		return id.atr
	case protocol.IdentityEID:
		return id.eid
	case protocol.IdentityICCID:
		return id.iccid
	case protocol.IdentityIMSI:
		return id.imsi
	}
	return ""
}

// identities returns the identities as the protocol shows them. (A
// struct, not a map, is kept per card: idle cards should cost little.)
func (id *identity) identities() protocol.Identities {
	ids := make(protocol.Identities, 4)
	for _, k := range identityKeys {
		if v := id.get(k); v != "" {
			ids[k] = v
		}
	}
	return ids
}

// cardHandshake runs a card connection's hello and identification. It
// returns the steady-state loop, or nil when the connection has ended.
func (s *Server) cardHandshake(c *conn) func() {
	hello, ok := c.readHello(protocol.ClientCard)
	if !ok {
		return nil
	}
	atr := hex.EncodeToString(hello.ATR)
	hello.ATR = nil // kept as a string only
	cc := &cardConn{c: c, hello: hello, state: protocol.StateInit, id: identity{atr: atr}}
	c.atr = atr
	if c.write(protocol.HelloAck{}) != nil {
		return nil
	}
	s.hub.add(cc)
	if !cc.identify() {
		cc.end("identification failed")
		return nil
	}
	c.setReadDeadline(time.Time{})
	c.releaseBuffers()
	c.startKeepalive()
	return func() {
		reason := cc.serve()
		c.log().Info("card connection ended", "reason", reason)
		cc.end(reason)
	}
}

// identify runs the identification and moves the card to ready. It
// returns false when the connection was ended instead.
func (cc *cardConn) identify() bool {
	c := cc.c
	timeout := c.srv.cfg.IdentifyTimeout
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	tr := &identTransmitter{cc: cc}
	found, err := identify(ctx, tr)
	id := identity{atr: cc.id.atr, eid: found.EID, iccid: found.ICCID, imsi: found.IMSI}
	if err != nil {
		var refused *cardRefused
		switch {
		case c.isClosing(): // shutting down
			return false
		case errors.As(err, &refused):
			// The agent is alive and in step with us but its card could
			// not answer: usable by ATR (and whatever was found).
			c.log().Warn("identification incomplete: card agent answered with an error; card usable by its ATR", "err", err)
		case tr.lost != nil && endedByPeer(tr.lost):
			c.log().Info("card agent left during identification", "err", tr.lost)
			return false
		case tr.lost != nil && isTimeout(tr.lost), errors.Is(err, context.DeadlineExceeded):
			msg := fmt.Sprintf("identification timed out: no answer within %v (the card agent must answer each c_apdu with r_apdu)", timeout)
			c.fail(websocket.ClosePolicyViolation, "identification timed out", msg)
			return false
		case tr.bad != nil:
			msg := fmt.Sprintf("identification failed: invalid answer to c_apdu %x: %v", tr.cmd, tr.bad)
			c.fail(websocket.CloseProtocolError, "invalid answer during identification", msg)
			return false
		case tr.lost != nil:
			c.log().Info("identification failed", "err", tr.lost)
			c.readFailed(tr.lost)
			return false
		default:
			// A malformed answer (e.g. no status word): the agent speaks
			// the protocol but not sensibly; drop it.
			c.fail(websocket.CloseProtocolError, "identification failed", "identification failed: "+err.Error())
			return false
		}
	}
	cc.mu.Lock()
	defer cc.mu.Unlock()
	cc.srv().hub.mu.Lock()
	cc.state = protocol.StateReady
	cc.id = id
	cc.srv().hub.mu.Unlock()
	c.log().Info("card ready", "identities", id.identities())
	return c.write(protocol.StateNotification{NewState: protocol.StateReady}) == nil
}

func (cc *cardConn) srv() *Server { return cc.c.srv }

// cardRefused is a card agent's error message in reply to a c_apdu.
type cardRefused struct{ message string }

func (e *cardRefused) Error() string { return "card agent error: " + e.message }

// identTransmitter is the card.Transmitter that identification uses: it
// relays each command to the agent and reads the answer on the card's own
// goroutine (nobody else reads the connection before the card is ready).
type identTransmitter struct {
	cc   *cardConn
	cmd  []byte // the last command sent
	lost error  // the connection failed (fatal read or write error)
	bad  error  // the agent sent an undecodable answer
}

func (t *identTransmitter) Transmit(ctx context.Context, cmd []byte) ([]byte, error) {
	c := t.cc.c
	t.cmd = cmd
	if dl, ok := ctx.Deadline(); ok {
		c.setReadDeadline(dl)
	}
	if err := c.write(protocol.CAPDU{Command: cmd}); err != nil {
		t.lost = err
		return nil, err
	}
	for {
		m, err := c.next()
		if err != nil {
			if recoverable(err) {
				t.bad = err
			} else {
				t.lost = err
			}
			return nil, err
		}
		switch m := m.(type) {
		case protocol.RAPDU:
			return append(m.Response, byte(m.SW>>8), byte(m.SW)), nil
		case protocol.Error:
			return nil, &cardRefused{m.Message}
		default:
			c.sendError("unexpected %s during identification: the server is waiting for the r_apdu answering c_apdu %x", m.MsgType(), cmd)
		}
	}
}

// serve is the card's steady state: read every message the agent sends
// and hand replies to the waiting user. It returns why the connection
// ended.
func (cc *cardConn) serve() string {
	c := cc.c
	for {
		m, err := c.next()
		if err != nil {
			if !recoverable(err) {
				return c.readFailed(err)
			}
			msg := describeBad(err)
			if replyLike(err) {
				cc.complete("", nil, "card agent sent an invalid reply: "+msg)
			}
			c.sendError("%s", msg)
			continue
		}
		switch mm := m.(type) {
		case protocol.RAPDU:
			if why := cc.complete(protocol.TypeRAPDU, m, ""); why != "" { // m: no new interface value
				c.sendError("unexpected r_apdu: %s", why)
			}
		case protocol.ResetResp:
			if why := cc.complete(protocol.TypeResetResp, m, ""); why != "" {
				c.sendError("unexpected reset_resp: %s", why)
			}
		case protocol.Error:
			// Never answered: a peer that answers errors with errors
			// (pySim's card client does) would loop forever.
			if cc.complete("", nil, "card agent error: "+mm.Message) != "" {
				c.log().Warn("card agent sent an error", "message", mm.Message)
			}
		case protocol.DisconnectAck:
			c.log().Debug("disconnect_ack")
		case protocol.Hello:
			c.sendError("duplicate hello: this connection has already said hello")
		default:
			c.sendError("unexpected %s from a card agent: the card port accepts r_apdu, reset_resp and error", m.MsgType())
		}
	}
}

// describeBad words a recoverable read error for the peer.
func describeBad(err error) string {
	var de *protocol.DecodeError
	if errors.As(err, &de) && errors.Is(err, protocol.ErrUnknownType) {
		return fmt.Sprintf("unknown msg_type %q", de.Type)
	}
	return err.Error()
}

// replyLike reports whether a bad message from a card agent was most
// likely meant as the reply to the outstanding request (so the waiting
// user should not wait for another): broken JSON, or a broken r_apdu,
// reset_resp or error. An unknown msg_type is not a reply.
func replyLike(err error) bool {
	var de *protocol.DecodeError
	if !errors.As(err, &de) {
		return false
	}
	switch de.Type {
	case "", protocol.TypeRAPDU, protocol.TypeResetResp, protocol.TypeError:
		return !errors.Is(err, protocol.ErrUnknownType)
	}
	return false
}

// complete answers the pending request with m (an r_apdu or reset_resp
// of type msgType), or with an error text when m is nil (msgType "" then
// matches any request). It runs on the card's goroutine and writes to the
// user directly. It returns "" when done, else why there was nothing to
// answer.
func (cc *cardConn) complete(msgType string, m protocol.Message, errText string) string {
	cc.mu.Lock()
	p := cc.pending
	switch {
	case p.from == nil:
		cc.mu.Unlock()
		return "no request is outstanding"
	case msgType != "" && msgType != p.want:
		cc.mu.Unlock()
		return "the server is waiting for " + p.want
	}
	cc.pending = request{}
	if rr, ok := m.(protocol.ResetResp); ok && len(rr.ATR) > 0 {
		// pySim's server, too, takes the new ATR as the card's identity.
		atr := hex.EncodeToString(rr.ATR)
		cc.srv().hub.mu.Lock()
		cc.id.atr = atr
		cc.srv().hub.mu.Unlock()
	}
	cc.mu.Unlock()
	if m != nil {
		_ = p.from.c.write(m)
	} else {
		p.from.c.sendError("%s", errText)
	}
	p.from.done(false)
	return ""
}

// end runs when the card connection is over: the card leaves the list and
// a user waiting for a reply learns at once that it is gone.
func (cc *cardConn) end(reason string) {
	cc.mu.Lock()
	cc.gone = reason
	p := cc.pending
	cc.pending = request{}
	if cc.timer != nil {
		cc.timer.Stop()
	}
	cc.srv().hub.remove(cc)
	cc.mu.Unlock()
	if p.from != nil {
		p.from.c.sendError("card disconnected: %s", reason)
		p.from.done(true)
	}
}

// send starts u's request m, which the card answers with a message of
// type want. It returns "" or, when the card is gone, the error for the
// user. On success the reply (or its failure) reaches the user later,
// from the card's goroutine or the timeout, followed by u.done.
func (cc *cardConn) send(u *userConn, m protocol.Message, want string) string {
	d := cc.srv().cfg.RequestTimeout
	cc.mu.Lock()
	if cc.gone != "" {
		cc.mu.Unlock()
		return "card disconnected: " + cc.gone
	}
	cc.pending = request{from: u, want: want, sent: m.MsgType(), deadline: time.Now().Add(d)}
	// The timer is not reset for every request (two timer operations per
	// APDU); it keeps running and, when it fires early for a request sent
	// later, is re-armed for the time left.
	switch {
	case cc.timer == nil:
		cc.timer = time.AfterFunc(d, cc.checkTimeout)
		cc.timerOn = true
	case !cc.timerOn:
		cc.timer.Reset(d)
		cc.timerOn = true
	}
	cc.mu.Unlock()
	// A failed write closes the card connection; end then answers.
	_ = cc.c.write(m)
	return ""
}

// checkTimeout runs on the request timer. A card agent that has not
// answered within RequestTimeout is disconnected.
func (cc *cardConn) checkTimeout() {
	cc.mu.Lock()
	cc.timerOn = false
	p := cc.pending
	if p.from == nil || cc.gone != "" {
		cc.mu.Unlock()
		return
	}
	if left := time.Until(p.deadline); left > 0 {
		cc.timer.Reset(left)
		cc.timerOn = true
		cc.mu.Unlock()
		return
	}
	cc.pending = request{}
	cc.mu.Unlock()
	d := cc.srv().cfg.RequestTimeout
	msg := fmt.Sprintf("no reply to %s within %v", p.sent, d)
	cc.c.log().Warn("card agent did not answer in time; disconnecting it", "msg_type", p.sent, "timeout", d)
	cc.c.sendError("%s; closing the connection", msg)
	cc.c.closeNow(websocket.ClosePolicyViolation, msg)
	p.from.c.sendError("card disconnected: %s", msg)
	p.from.done(true)
}

// associate makes u the card's user. It returns "" on success, else the
// error for the user.
func (cc *cardConn) associate(u *userConn, key, value string) string {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	switch {
	case cc.gone != "":
		return fmt.Sprintf("card %s %s disconnected", key, value)
	case cc.state == protocol.StateAssociated:
		return fmt.Sprintf("card %s %s is in use by another user", key, value)
	case cc.state != protocol.StateReady:
		return fmt.Sprintf("card %s %s is still being identified; try again in a moment", key, value)
	}
	cc.setState(protocol.StateAssociated)
	cc.user = u
	if cc.c.write(protocol.StateNotification{NewState: protocol.StateAssociated}) != nil {
		// The card connection is closing; its goroutine cleans up.
		cc.user = nil
		return fmt.Sprintf("card %s %s disconnected", key, value)
	}
	return ""
}

// setState changes the listed state; cc.mu must be held.
func (cc *cardConn) setState(state string) {
	cc.srv().hub.mu.Lock()
	cc.state = state
	cc.srv().hub.mu.Unlock()
}

// release ends u's association: the card is ready again.
func (cc *cardConn) release(u *userConn) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.user != u || cc.gone != "" {
		return
	}
	cc.user = nil
	cc.setState(protocol.StateReady)
	_ = cc.c.write(protocol.StateNotification{NewState: protocol.StateReady})
}
