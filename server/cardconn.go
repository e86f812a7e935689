package server

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/internal/auth"
	"github.com/wsrc-go/wsrc/protocol"
)

// identify is the identification sequence; a seam for tests.
var identify = card.Identify

// cardConn is one card agent connection: one card in one reader.
type cardConn struct {
	c     *conn
	hello protocol.Hello // read-only after hello
	agent string         // the authenticated agent's name, else hello.Agent; read-only
	slot  string         // agent and reader, the key for replacing stale connections; "" if either is unknown

	// Guarded by srv.hub.mu; written only while mu is held as well, so
	// holders of either lock may read them:
	state    string   // protocol.StateInit, StateReady or StateAssociated
	id       identity // what users select the card by
	userName string   // the associated user's name or address, for events
	userID   uint64   // the associated user's connection ID; 0 when none

	apdus atomic.Uint64 // c_apdus relayed to the card, for Server.Snapshot

	mu      sync.Mutex // guards the fields below; lock order: mu, then hub.mu
	user    *userConn  // the associated user; nil when none
	pending request    // the request in flight; pending.from == nil when none
	// withdrawn: user's rules no longer allow the card (see
	// Server.Recheck), but its request is in flight; when that ends, the
	// user gets errWithdrawn instead of the reply, and the card is free.
	withdrawn bool
	gone      string      // why the connection ended; "" while it is up
	timer     *time.Timer // request timeout (see checkTimeout); nil until the first request
	timerOn   bool        // timer is armed
}

// request is a user's c_apdu or reset_req waiting for the card's reply.
type request struct {
	from     *userConn // who asked; the reply goes there
	want     string    // the reply's msg_type: r_apdu or reset_resp
	sent     string    // the request's msg_type, for messages
	deadline time.Time // RequestTimeout after it was sent
	cmd      []byte    // the command APDU, kept only for a Tracer
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
	cc := &cardConn{c: c, hello: hello, agent: hello.Agent, state: protocol.StateInit, id: identity{atr: atr}}
	if n := c.name; n != "" {
		// The authenticated name is the one rules and users see.
		if hello.Agent != "" && hello.Agent != n {
			c.log().Debug("agent calls itself otherwise in hello; using its authenticated name", "hello_agent", logSafe(hello.Agent))
		}
		cc.agent = n
	}
	if cc.agent != "" && hello.Reader != "" {
		cc.slot = cc.agent + "\x00" + hello.Reader
	}
	c.card = cc
	if c.write(protocol.HelloAck{}) != nil {
		return nil
	}
	if old := s.hub.add(cc); old != nil {
		reason := "replaced by a new connection from the same agent and reader"
		old.c.lost.Store(true) // the agent came back: the old connection was stale
		l := old.c.log()
		if auth.ClientKey(old.c.addr) == auth.ClientKey(c.addr) {
			l.Info("card connection replaced by the agent's new one", "agent", logSafe(cc.agent), "reader", logSafe(hello.Reader), "new_remote", c.addr)
		} else {
			l.Warn("card connection replaced by one from another address; if two agents share a name or token, give each its own",
				"agent", logSafe(cc.agent), "reader", logSafe(hello.Reader), "new_remote", c.addr)
		}
		old.end(reason)
		old.c.closeGently(websocket.ClosePolicyViolation, reason)
	}
	cc.mu.Lock()
	if cc.gone == "" {
		cc.emit()
	}
	cc.mu.Unlock()
	if !cc.identify() {
		cc.end("identification failed")
		return nil
	}
	c.setReadDeadline(time.Time{})
	c.releaseBuffers()
	c.startKeepalive()
	return func() {
		reason := cc.serve()
		cc.end(reason)
		c.log().Info("card connection ended", "reason", reason)
	}
}

// emit tells the Observer the card's state. Called with cc.mu held, so
// that a card's events arrive in the order of its changes.
func (cc *cardConn) emit() {
	h := &cc.srv().hub
	h.mu.Lock()
	ev := CardEvent{ID: cc.c.id, Agent: cc.agent, Reader: cc.hello.Reader, Identities: cc.id.identities(),
		State: cc.state, User: cc.userName, Remote: cc.c.addr}
	h.mu.Unlock()
	if cc.gone != "" {
		ev.State, ev.User, ev.Lost = "", "", cc.c.lost.Load()
	}
	cc.srv().obs.CardChanged(ev)
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
	found = plausible(found, c.log())
	id := identity{atr: cc.id.atr, eid: found.EID, iccid: found.ICCID, imsi: found.IMSI}
	if err != nil {
		var refused *cardRefused
		switch {
		case c.isClosing(): // shutting down, or replaced
			return false
		case errors.As(err, &refused):
			// The agent is alive and in step with us but its card could
			// not answer: usable by ATR (and whatever was found).
			c.problem(ProblemIdentify)
			c.log().Warn("identification incomplete: card agent answered with an error; card usable by its ATR", "err", err)
		case tr.lost != nil && endedByPeer(tr.lost):
			c.log().Info("card agent left during identification", "err", tr.lost)
			c.readFailed(tr.lost)
			return false
		case tr.lost != nil && isTimeout(tr.lost), errors.Is(err, context.DeadlineExceeded):
			c.problem(ProblemIdentify)
			msg := fmt.Sprintf("identification timed out: no answer within %v (the card agent must answer each c_apdu with r_apdu)", timeout)
			c.fail(websocket.ClosePolicyViolation, "identification timed out", msg)
			return false
		case tr.bad != nil:
			c.problem(ProblemIdentify)
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
			c.problem(ProblemIdentify)
			c.fail(websocket.CloseProtocolError, "identification failed", "identification failed: "+err.Error())
			return false
		}
	}
	cc.mu.Lock()
	if cc.gone != "" { // replaced meanwhile
		cc.mu.Unlock()
		return false
	}
	// The agent's rules are read with cc.mu held: a recheck that changes
	// them later finds the card ready and checks it then (recheck.go).
	h := &cc.srv().hub
	h.mu.Lock()
	card := cc.accessCard()
	card.ICCID, card.EID = id.iccid, id.eid
	who := c.who()
	allowed := who.Principal == nil || who.MayUse(card)
	var holder *cardConn
	var dupKey string
	if allowed {
		holder, dupKey = h.conflictWith(cc, id)
	}
	if allowed && holder == nil {
		cc.state = protocol.StateReady
		cc.id = id
	}
	var conflict Conflict
	if holder != nil {
		conflict = Conflict{Time: time.Now(), Identity: dupKey, Value: id.get(dupKey), Agent: cc.agent, Reader: cc.hello.Reader,
			Remote: c.addr, Holder: holder.agent, HolderRemote: holder.c.addr}
	}
	h.mu.Unlock()
	if holder != nil {
		cc.mu.Unlock()
		c.srv.conflicts.add(conflict)
		c.srv.obs.Refused(Refusal{Port: roleCard, Remote: c.addr, Name: c.name, Reason: RefusedDuplicate})
		c.log().Warn("card refused: its identity is already listed from another agent",
			"identity", dupKey, "value", conflict.Value, "agent", logSafe(cc.agent), "listed_agent", logSafe(conflict.Holder), "listed_remote", conflict.HolderRemote)
		c.fail(websocket.ClosePolicyViolation, "duplicate card identity", duplicateText(dupKey, conflict.Value))
		return false
	}
	if !allowed {
		cc.mu.Unlock()
		if !c.revoked.Load() { // else it is closing already
			c.srv.obs.Refused(Refusal{Port: roleCard, Remote: c.addr, Name: c.name, Reason: RefusedCard})
			c.log().Warn("card refused by the agent's rules", "identities", id.identities())
			c.fail(websocket.ClosePolicyViolation, errCardNotAllowed, cardNotAllowed(c.name, id.identities(), false))
		}
		return false
	}
	c.log().Info("card ready", "identities", id.identities())
	cc.emit()
	err = c.write(protocol.StateNotification{NewState: protocol.StateReady})
	cc.mu.Unlock()
	return err == nil
}

func (cc *cardConn) srv() *Server { return cc.c.srv }

// atr returns the card's current ATR (from hello, or its last reset).
func (cc *cardConn) atr() string {
	h := &cc.srv().hub
	h.mu.Lock()
	defer h.mu.Unlock()
	return cc.id.atr
}

// errCardNotAllowed is the close reason for a card its agent's rules
// exclude.
const errCardNotAllowed = "card not allowed for this agent"

// cardNotAllowed words the error for agent name whose rules exclude the
// card with ids: at identification, or (changed) after a reload of the
// accounts changed them.
func cardNotAllowed(name string, ids protocol.Identities, changed bool) string {
	if changed {
		return fmt.Sprintf("card not allowed: agent %q may no longer use the card %v (the server's operator changed the agent's cards rules)", name, ids)
	}
	return fmt.Sprintf("card not allowed: agent %q may not register the card %v (see the agent's cards rules in the server configuration)", name, ids)
}

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

func (t *identTransmitter) Transmit(ctx context.Context, cmd []byte) (resp []byte, err error) {
	c := t.cc.c
	t.cmd = cmd
	if tr := c.srv.cfg.Tracer; tr != nil {
		start := time.Now()
		defer func() {
			var reply protocol.Message
			if r, ok := protocol.RAPDUOf(resp); ok && err == nil {
				reply = r
			}
			t.cc.trace(tr, "", start, cmd, reply, err)
		}()
	}
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
			return m.Bytes(), nil
		case protocol.Error:
			return nil, &cardRefused{m.Message}
		default:
			c.problem(ProblemUnexpected)
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
		if err != nil && !recoverable(err) {
			return c.readFailed(err)
		}
		if !c.spend() && !cc.answers(m, err) {
			if c.rateRefused() {
				return c.endReason()
			}
			continue
		}
		if err != nil {
			c.problem(ProblemBadMessage)
			msg := describeBad(err)
			if replyLike(err) {
				cc.complete("", nil, "card agent sent an invalid reply: "+msg)
			}
			c.sendError("%s", msg)
			continue
		}
		switch mm := m.(type) {
		case protocol.RAPDU:
			if err := cc.complete(protocol.TypeRAPDU, m, ""); err != nil { // m: no new interface value
				c.problem(ProblemUnexpected)
				c.sendError("unexpected r_apdu: %s", err)
			}
		case protocol.ResetResp:
			if len(mm.ATR) > MaxATRLen {
				c.problem(ProblemBadMessage)
				msg := fmt.Sprintf("invalid reset_resp: atr is %d bytes; an ATR has at most %d", len(mm.ATR), MaxATRLen)
				cc.complete("", nil, "card agent sent an invalid reply: "+msg)
				c.sendError("%s", msg)
				continue
			}
			if err := cc.complete(protocol.TypeResetResp, m, ""); err != nil {
				c.problem(ProblemUnexpected)
				c.sendError("unexpected reset_resp: %s", err)
			}
		case protocol.Error:
			// Never answered: a peer that answers errors with errors
			// (pySim's card client does) would loop forever.
			if cc.complete("", nil, "card agent error: "+mm.Message) != nil {
				c.log().Warn("card agent sent an error", "message", mm.Message)
			}
		case protocol.DisconnectAck:
			c.log().Debug("disconnect_ack")
		case protocol.Hello:
			c.problem(ProblemUnexpected)
			c.sendError("duplicate hello: this connection has already said hello")
		default:
			c.problem(ProblemUnexpected)
			c.sendError("unexpected %s from a card agent: the card port accepts r_apdu, reset_resp and error", m.MsgType())
		}
	}
}

// answers reports whether m (or the bad message err) may be the answer
// to the pending request: such a message passes the rate limit, so that
// a user never waits in vain for a reply the limit dropped.
func (cc *cardConn) answers(m protocol.Message, err error) bool {
	cc.mu.Lock()
	pending := cc.pending.from != nil
	cc.mu.Unlock()
	if !pending {
		return false
	}
	if err != nil {
		return replyLike(err)
	}
	switch m.(type) {
	case protocol.RAPDU, protocol.ResetResp, protocol.Error:
		return true
	}
	return false
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
// user directly. It returns nil when done, else why there was nothing to
// answer (errNoRequest, *waitingForError).
func (cc *cardConn) complete(msgType string, m protocol.Message, errText string) error {
	cc.mu.Lock()
	p := cc.pending
	switch {
	case p.from == nil:
		cc.mu.Unlock()
		return errNoRequest
	case msgType != "" && msgType != p.want:
		cc.mu.Unlock()
		return &waitingForError{p.want}
	}
	cc.pending = request{}
	if rr, ok := m.(protocol.ResetResp); ok && len(rr.ATR) > 0 {
		// pySim's server, too, takes the new ATR as the card's identity.
		atr := hex.EncodeToString(rr.ATR)
		cc.srv().hub.mu.Lock()
		cc.id.atr = atr
		cc.srv().hub.mu.Unlock()
	}
	withdrawn := cc.withdrawn
	if withdrawn {
		// Answered: the card may go to another user now.
		cc.disassociate()
	}
	cc.mu.Unlock()
	outcome := OutcomeOK
	if m == nil {
		outcome = OutcomeAgentErr
	}
	cc.finished(p, outcome, m, errText)
	switch {
	case withdrawn:
		p.from.c.sendError("%s", errWithdrawnCard)
	case m != nil:
		_ = p.from.c.write(m)
	default:
		p.from.c.sendError("%s", errText)
	}
	p.from.done(withdrawn)
	return nil
}

// finished reports the end of request p to the Observer and the Tracer.
// reply is the card's answer (nil if none); why says what went wrong.
// It is called before the user gets the reply, so that whoever reads
// metrics or traces after the reply finds the request counted.
func (cc *cardConn) finished(p request, outcome Outcome, reply protocol.Message, why string) {
	s := cc.srv()
	d := s.cfg.RequestTimeout
	start := p.deadline.Add(-d)
	s.obs.Relayed(RequestEvent{CardID: cc.c.id, User: p.from.c.peerName(), Type: p.sent, Duration: time.Since(start), Outcome: outcome})
	if tr := s.cfg.Tracer; tr != nil {
		var err error
		if reply == nil {
			err = errors.New(why)
		}
		cc.trace(tr, p.from.c.peerName(), start, p.cmd, reply, err)
	}
}

// trace gives one exchange to tr: cmd nil for a reset; reply the
// card's r_apdu or reset_resp, nil when there was none (err says why).
func (cc *cardConn) trace(tr Tracer, user string, start time.Time, cmd []byte, reply protocol.Message, err error) {
	h := &cc.srv().hub
	h.mu.Lock()
	iccid, eid := cc.id.iccid, cc.id.eid
	h.mu.Unlock()
	t := APDUTrace{CardID: cc.c.id, ICCID: iccid, EID: eid, User: user, Start: start, Duration: time.Since(start),
		Command: cmd, Reset: cmd == nil}
	switch r := reply.(type) {
	case protocol.RAPDU:
		t.Response, t.SW = r.Response, r.SW
	case protocol.ResetResp:
		t.Response = r.ATR
	}
	if err != nil {
		t.Err = err.Error()
	}
	tr.TraceAPDU(t)
}

// end runs when the card connection is over: the card leaves the list and
// a user waiting for a reply learns at once that it is gone. Only the
// first call counts (a replaced connection is ended by its successor,
// then by its own goroutine).
func (cc *cardConn) end(reason string) {
	cc.mu.Lock()
	if cc.gone != "" {
		cc.mu.Unlock()
		return
	}
	cc.gone = reason
	p := cc.pending
	cc.pending = request{}
	if cc.timer != nil {
		cc.timer.Stop()
	}
	cc.srv().hub.remove(cc)
	cc.emit()
	cc.mu.Unlock()
	if p.from != nil {
		cc.finished(p, OutcomeGone, nil, "card disconnected: "+reason)
		p.from.c.sendError("card disconnected: %s", reason)
		p.from.done(true)
	}
}

// send starts u's request m, which the card answers with a message of
// type want. It returns nil or, when the card is gone or withdrawn, the
// error for the user (*cardGoneError, errWithdrawnCard). On success the
// reply (or its failure) reaches the user later, from the card's
// goroutine or the timeout, followed by u.done.
func (cc *cardConn) send(u *userConn, m protocol.Message, want string) error {
	d := cc.srv().cfg.RequestTimeout
	cc.mu.Lock()
	switch {
	case cc.gone != "":
		cc.mu.Unlock()
		return &cardGoneError{cc.gone}
	case cc.user != u: // taken away by Server.Recheck
		cc.mu.Unlock()
		return errWithdrawnCard
	}
	cc.pending = request{from: u, want: want, sent: m.MsgType(), deadline: time.Now().Add(d)}
	if ca, ok := m.(protocol.CAPDU); ok {
		cc.apdus.Add(1)
		if cc.srv().cfg.Tracer != nil {
			cc.pending.cmd = ca.Command
		}
	}
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
	return nil
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
	cc.c.lost.Store(true) // the agent stopped answering
	d := cc.srv().cfg.RequestTimeout
	msg := fmt.Sprintf("no reply to %s within %v", p.sent, d)
	cc.c.log().Warn("card agent did not answer in time; disconnecting it", "msg_type", p.sent, "timeout", d)
	cc.c.sendError("%s; closing the connection", msg)
	cc.c.closeNow(websocket.ClosePolicyViolation, msg)
	cc.finished(p, OutcomeTimeout, nil, msg)
	p.from.c.sendError("card disconnected: %s", msg)
	p.from.done(true)
}

// associate makes u the card's user. It returns nil on success, else a
// *selectError for the user.
func (cc *cardConn) associate(u *userConn, key, value string) error {
	cc.mu.Lock()
	fail := func(kind selectFailure) error {
		cc.mu.Unlock()
		return &selectError{kind: kind, key: key, value: value}
	}
	switch {
	case cc.gone != "":
		return fail(selectDisconnected)
	case cc.state == protocol.StateAssociated:
		return fail(selectInUse)
	case cc.state != protocol.StateReady:
		return fail(selectIdentifying)
	case !cc.allows(u):
		// The user's rules changed since hub.find (Server.Recheck).
		return fail(selectNotConnected)
	}
	cc.setState(protocol.StateAssociated, u.c)
	cc.user, cc.withdrawn = u, false
	if cc.c.write(protocol.StateNotification{NewState: protocol.StateAssociated}) != nil {
		// The card connection is closing; its goroutine cleans up.
		cc.user = nil
		cc.setState(protocol.StateReady, nil)
		return fail(selectDisconnected)
	}
	cc.emit()
	cc.mu.Unlock()
	return nil
}

// setState changes the listed state and user (nil: none); cc.mu must be
// held.
func (cc *cardConn) setState(state string, user *conn) {
	cc.srv().hub.mu.Lock()
	cc.state = state
	cc.userName, cc.userID = "", 0
	if user != nil {
		cc.userName, cc.userID = user.peerName(), user.id
	}
	cc.srv().hub.mu.Unlock()
}

// release ends u's association: the card is ready again.
func (cc *cardConn) release(u *userConn) {
	cc.mu.Lock()
	if cc.user == u && cc.gone == "" {
		cc.disassociate()
	}
	cc.mu.Unlock()
}

// disassociate ends the association with the current user: the card is
// ready again, and its agent is told. cc.mu must be held.
func (cc *cardConn) disassociate() {
	cc.user, cc.withdrawn = nil, false
	cc.setState(protocol.StateReady, nil)
	cc.emit()
	_ = cc.c.write(protocol.StateNotification{NewState: protocol.StateReady})
}

// allows reports whether u's current rights let it use the card. cc.mu
// must be held (so that Server.Recheck, which changes rights first and
// then checks each card with cc.mu held, cannot miss a new association).
func (cc *cardConn) allows(u *userConn) bool {
	h := &cc.srv().hub
	h.mu.Lock()
	defer h.mu.Unlock()
	return u.c.who().mayUse(cc)
}
