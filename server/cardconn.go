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

	mu      sync.Mutex // guards the fields below; lock order: mu, then hub.mu
	user    *userConn  // the associated user; nil when none
	waiter  *userConn  // the user waiting for a reply; nil when none
	waitFor string     // the msg_type waiter expects (r_apdu or reset_resp)
	gone    string     // why the connection ended; "" while it is up
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

// reply is what a waiting user gets from its card: a response, or why
// there is none.
type reply struct {
	msg  protocol.Message // protocol.RAPDU or protocol.ResetResp; nil on error
	err  string           // error text for the user when msg is nil
	lost bool             // the card is gone; the user is no longer associated
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
		case errors.As(err, &refused):
			// The agent is alive and in step with us but its card could
			// not answer: usable by ATR (and whatever was found).
			c.log().Warn("identification incomplete: card agent answered with an error; card usable by its ATR", "err", err)
		case tr.lost != nil && endedByPeer(tr.lost):
			c.log().Info("card agent left during identification", "err", tr.lost)
			return false
		case tr.lost != nil && isTimeout(tr.lost):
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
				cc.deliver("", reply{err: "card agent sent an invalid reply: " + msg})
			}
			c.sendError("%s", msg)
			continue
		}
		switch mm := m.(type) {
		case protocol.RAPDU:
			if why := cc.deliver(protocol.TypeRAPDU, reply{msg: m}); why != "" { // m: no new interface value
				c.sendError("unexpected r_apdu: %s", why)
			}
		case protocol.ResetResp:
			if why := cc.deliver(protocol.TypeResetResp, reply{msg: m}); why != "" {
				c.sendError("unexpected reset_resp: %s", why)
			}
		case protocol.Error:
			// Never answered: a peer that answers errors with errors
			// (pySim's card client does) would loop forever.
			if cc.deliver("", reply{err: "card agent error: " + mm.Message}) != "" {
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

// deliver hands r to the waiting user if it expects msgType ("" matches
// any request). It returns "" when delivered, else why not.
func (cc *cardConn) deliver(msgType string, r reply) string {
	cc.mu.Lock()
	w := cc.waiter
	switch {
	case w == nil:
		cc.mu.Unlock()
		return "no request is outstanding"
	case msgType != "" && msgType != cc.waitFor:
		want := cc.waitFor
		cc.mu.Unlock()
		return "the server is waiting for " + want
	}
	cc.waiter = nil
	if rr, ok := r.msg.(protocol.ResetResp); ok && len(rr.ATR) > 0 {
		// pySim's server, too, takes the new ATR as the card's identity.
		atr := hex.EncodeToString(rr.ATR)
		cc.srv().hub.mu.Lock()
		cc.id.atr = atr
		cc.srv().hub.mu.Unlock()
	}
	cc.mu.Unlock()
	w.reply <- r // one slot, one outstanding request: never blocks
	return ""
}

// end runs when the card connection is over: the card leaves the list and
// a waiting user learns at once that it is gone.
func (cc *cardConn) end(reason string) {
	cc.mu.Lock()
	cc.gone = reason
	w := cc.waiter
	cc.waiter = nil
	cc.srv().hub.remove(cc)
	cc.mu.Unlock()
	if w != nil {
		w.reply <- reply{err: "card disconnected: " + reason, lost: true}
	}
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

// request registers u as waiting for a reply of type want. It returns ""
// or, when the card is gone, the error for the user.
func (cc *cardConn) request(u *userConn, want string) string {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.gone != "" {
		return "card disconnected: " + cc.gone
	}
	cc.waiter = u
	cc.waitFor = want
	return ""
}

// cancel withdraws u's request after a timeout. It returns false when a
// reply was delivered meanwhile (it is then in u.reply).
func (cc *cardConn) cancel(u *userConn) bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.waiter != u {
		return false
	}
	cc.waiter = nil
	return true
}
