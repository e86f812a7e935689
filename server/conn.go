package server

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"

	"github.com/wsrc-go/wsrc/internal/auth"
	"github.com/wsrc-go/wsrc/protocol"
)

// conn is one upgraded WebSocket, card or user, with the framing rules
// both share: bounded reads, serialised writes with a deadline, keepalive
// pings and an orderly close.
type conn struct {
	srv     *Server
	ws      *websocket.Conn // Close and WriteControl may be called from any goroutine
	role    string          // roleCard or roleUser
	addr    string          // the peer's address as http gave it ("ip:port")
	remote  protocol.RemoteAddr
	id      uint64    // ConnEvent.ID
	since   time.Time // when it was accepted
	name    string    // the authenticated user or agent; "" for an anonymous peer of an open port
	addrKey string    // the per-address count this connection holds; "" for none
	// card is the card connection this is (nil for users); set by the
	// handshake before the card is listed, read-only after.
	card *cardConn

	// Owned by the connection's goroutine, the only reader:
	rbuf   []byte     // read buffer, reused across messages
	bucket rateBucket // the message rate limit

	// lost is set when the connection was lost rather than closed (see
	// CardEvent.Lost); by whoever finds out, before the card's end.
	lost atomic.Bool
	// writeFailed is set by the first failed write: later writes to the
	// dying connection fail too, and are neither logged nor counted.
	writeFailed atomic.Bool

	// rights are what the peer may do, as admitted (nil: an anonymous
	// peer of an open port); Server.Recheck replaces them when the
	// accounts change (the account, and so name, stays the same). Read
	// them with who.
	rights atomic.Pointer[auth.Principal]
	// revoked is set, once, when a recheck found the credentials no
	// longer accepted; the connection is closing then (recheck.go).
	revoked atomic.Bool

	wmu  sync.Mutex // serialises data-frame writes; guards wbuf
	wbuf []byte     // encoding buffer, reused across writes

	kmu       sync.Mutex  // guards the keepalive fields below
	ping      *time.Timer // next keepalive ping; nil until keepalive starts
	awaitPong bool        // a ping is out and its pong not yet read
	busy      bool        // the goroutine is waiting on the card, not reading
	closing   bool        // a close frame has been sent (or the conn is gone)
	// reason is why the connection ends, as first found out: by the
	// goroutine (a failed read, a refused peer) or by anyone who closes
	// it (shutdown, a recheck, a replacement); "" while it is up.
	reason string
}

func newConn(s *Server, ws *websocket.Conn, role, remote string, who principal) *conn {
	c := &conn{srv: s, ws: ws, role: role, addr: remote, remote: remoteAddr(remote), since: time.Now(), name: who.name()}
	c.rights.Store(who.Principal)
	ws.SetPongHandler(c.pong)
	return c
}

// who returns the peer's current rights.
func (c *conn) who() principal { return principal{c.rights.Load()} }

// log returns the server's logger with the connection's attributes (for
// a card, its current ATR). It is built per call (logging is rare) so
// that idle connections do not each keep a logger. Not to be called with
// hub.mu held.
func (c *conn) log() *slog.Logger {
	l := c.srv.log.With("port", c.role, "remote", c.addr)
	if c.name != "" {
		l = l.With("name", c.name)
	}
	if c.card != nil {
		l = l.With("atr", c.card.atr())
	}
	return l
}

// problem tells the Observer about a problem on this connection.
func (c *conn) problem(kind ProblemKind) { c.srv.obs.Problem(c.event(), kind) }

// event describes the connection for the Observer.
func (c *conn) event() ConnEvent {
	return ConnEvent{ID: c.id, Port: c.role, Remote: c.addr, Name: c.name}
}

// peerName names the peer in events and traces: its user or agent name,
// else its address.
func (c *conn) peerName() string {
	if c.name != "" {
		return c.name
	}
	return c.addr
}

// endReason is why the connection ended, as well as is known. Called
// once its goroutine is done.
func (c *conn) endReason() string {
	c.kmu.Lock()
	defer c.kmu.Unlock()
	if c.reason != "" {
		return c.reason
	}
	return "ended"
}

// noteEnd records why the connection ends, unless a reason is known
// already (the first cause stands).
func (c *conn) noteEnd(reason string) {
	c.kmu.Lock()
	if c.reason == "" {
		c.reason = reason
	}
	c.kmu.Unlock()
}

// errTooBig ends a connection that sent a message over MaxFrameSize.
type errTooBig struct{ limit int }

func (e errTooBig) Error() string {
	return fmt.Sprintf("message too big: the limit is %d bytes", e.limit)
}

// errBinary reports a binary frame; WSRC messages are text.
var errBinary = errors.New("binary frames are not supported: send each message as a JSON text frame")

// errBadUTF8 reports a text frame that is not valid UTF-8, which RFC 6455
// (section 8.1) says must fail the connection (close 1007).
var errBadUTF8 = errors.New("invalid UTF-8 in a text frame")

// recoverable reports whether err (from next) concerns one message only,
// leaving the connection usable.
func recoverable(err error) bool {
	var de *protocol.DecodeError
	return errors.As(err, &de) || errors.Is(err, errBinary)
}

// next reads and decodes the next message. A recoverable error (see
// recoverable) describes a bad message; any other error ends the
// connection.
func (c *conn) next() (protocol.Message, error) {
	typ, r, err := c.ws.NextReader()
	if err != nil {
		return nil, err
	}
	limit := c.srv.cfg.MaxFrameSize
	buf := c.rbuf[:0]
	if buf == nil {
		buf = make([]byte, 0, 256)
	}
	for {
		if len(buf) == cap(buf) {
			if len(buf) > limit {
				return nil, errTooBig{limit}
			}
			buf = append(buf, 0)[:len(buf)]
			if cap(buf) > limit+1 {
				buf = buf[: len(buf) : limit+1]
			}
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	if len(buf) > limit {
		return nil, errTooBig{limit}
	}
	// Keep a small buffer for the next message, not a huge one.
	if cap(buf) <= 4096 {
		c.rbuf = buf
	} else {
		c.rbuf = nil
	}
	if typ != websocket.TextMessage {
		return nil, errBinary
	}
	if !utf8.Valid(buf) {
		return nil, errBadUTF8
	}
	return protocol.Decode(buf)
}

// write sends m as one text frame within the write timeout. On failure
// the connection is closed (its goroutine then ends) and the error
// returned; callers need not do more than stop.
func (c *conn) write(m protocol.Message) error {
	c.wmu.Lock()
	c.wbuf = protocol.AppendEncode(c.wbuf[:0], m)
	if err := c.ws.SetWriteDeadline(time.Now().Add(c.srv.cfg.WriteTimeout)); err != nil {
		c.wmu.Unlock()
		return err
	}
	err := c.ws.WriteMessage(websocket.TextMessage, c.wbuf)
	if cap(c.wbuf) > 4096 {
		c.wbuf = nil
	}
	c.wmu.Unlock()
	if err != nil && !errors.Is(err, websocket.ErrCloseSent) {
		c.lost.Store(true)
		if c.writeFailed.CompareAndSwap(false, true) {
			c.problem(ProblemWrite)
			c.log().Info("write failed; closing", "msg_type", m.MsgType(), "err", err)
		}
		c.ws.Close()
	}
	return err
}

// sendError sends an error message; a failure is handled by write.
func (c *conn) sendError(format string, args ...any) {
	msg := format
	if len(args) > 0 {
		msg = fmt.Sprintf(format, args...)
	}
	c.log().Debug("sending error", "message", msg)
	_ = c.write(protocol.Error{Message: msg})
}

// fail sends an error message, then closes the connection with code and
// reason (close codes: 1002 protocol error, 1008 policy violation, 1009
// message too big, 1011 keepalive timeout). Called by the connection's
// goroutine, which must return afterwards.
func (c *conn) fail(code int, reason string, message string) {
	c.log().Info("closing connection", "code", code, "reason", message)
	if message != "" {
		c.noteEnd(message)
	}
	if message != "" {
		_ = c.write(protocol.Error{Message: message})
	}
	c.closeGently(code, reason)
	c.drain()
}

// closeReason makes s fit a close frame: valid UTF-8, at most 123 bytes.
func closeReason(s string) string {
	const max = 123
	s = strings.ToValidUTF8(s, "?")
	if len(s) <= max {
		return s
	}
	cut := max - 3
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

// isClosing reports whether a close frame has been sent.
func (c *conn) isClosing() bool {
	c.kmu.Lock()
	defer c.kmu.Unlock()
	return c.closing
}

// closeGently sends a close frame (once) and makes the reader give up
// within closeGrace: the reader gets the peer's answering close frame or
// a timeout, and its goroutine ends. Safe from any goroutine.
func (c *conn) closeGently(code int, reason string) {
	c.kmu.Lock()
	already := c.closing
	c.closing = true
	if c.reason == "" {
		c.reason = reason
	}
	if c.ping != nil {
		c.ping.Stop()
	}
	c.kmu.Unlock()
	if already {
		return
	}
	deadline := time.Now().Add(closeGrace)
	_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, closeReason(reason)), deadline)
	_ = c.ws.SetReadDeadline(deadline)
}

// over marks the connection gone once its goroutine is done, however it
// ended (the peer's close frame, a dropped TCP connection, our close):
// the keepalive timer is stopped for good, so that nothing keeps the
// connection reachable or pings a dead peer.
func (c *conn) over() {
	c.kmu.Lock()
	c.closing = true
	if c.ping != nil {
		c.ping.Stop()
		c.ping = nil
	}
	c.kmu.Unlock()
}

// closeNow sends a close frame and closes the TCP connection at once.
func (c *conn) closeNow(code int, reason string) {
	c.closeGently(code, reason)
	c.ws.Close()
}

// drain reads and discards until the peer's close frame, an error or the
// close grace deadline, so that our close frame is not lost to a TCP
// reset caused by unread input.
func (c *conn) drain() {
	for {
		_, r, err := c.ws.NextReader()
		if err != nil {
			return
		}
		if _, err := io.Copy(io.Discard, r); err != nil {
			return
		}
	}
}

// releaseBuffers drops the read and encoding buffers, so that a
// connection about to idle (a card after identification) holds none; the
// next message allocates them again. Called by the connection's goroutine.
func (c *conn) releaseBuffers() {
	c.rbuf = nil
	c.wmu.Lock()
	c.wbuf = nil
	c.wmu.Unlock()
}

// startKeepalive arms the ping timer; called once the connection is in
// its steady state (after hello, or after identification for cards).
func (c *conn) startKeepalive() {
	d := c.srv.cfg.PingInterval
	if d < 0 {
		return
	}
	c.kmu.Lock()
	if !c.closing {
		c.ping = time.AfterFunc(d, c.sendPing)
	}
	c.kmu.Unlock()
}

// sendPing runs on the ping timer. It sets the read deadline that the pong
// must beat, unless the goroutine is busy waiting for a card (then it is
// not reading, and the ping is skipped for this round).
func (c *conn) sendPing() {
	cfg := &c.srv.cfg
	c.kmu.Lock()
	if c.closing {
		c.kmu.Unlock()
		return
	}
	send := !c.busy && !c.awaitPong
	if send {
		c.awaitPong = true
		_ = c.ws.SetReadDeadline(time.Now().Add(cfg.PongTimeout))
	}
	c.ping.Reset(cfg.PingInterval)
	c.kmu.Unlock()
	if send {
		// A failed ping means a dead or stuck peer; the pong deadline
		// ends the connection then.
		_ = c.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(cfg.WriteTimeout))
	}
}

// pong is the pong handler (runs on the reader goroutine).
func (c *conn) pong(string) error {
	c.kmu.Lock()
	if c.awaitPong && !c.closing {
		c.awaitPong = false
		_ = c.ws.SetReadDeadline(time.Time{})
	}
	c.kmu.Unlock()
	return nil
}

// setBusy marks the start and end of a wait on the card, during which the
// goroutine does not read and so cannot see a pong: the pong deadline is
// suspended meanwhile and restarted afterwards.
func (c *conn) setBusy(busy bool) {
	c.kmu.Lock()
	c.busy = busy
	if c.awaitPong && !c.closing {
		var d time.Time
		if !busy {
			d = time.Now().Add(c.srv.cfg.PongTimeout)
		}
		_ = c.ws.SetReadDeadline(d)
	}
	c.kmu.Unlock()
}

// setReadDeadline sets the read deadline unless the connection is
// closing (then closeGently's deadline stands).
func (c *conn) setReadDeadline(t time.Time) {
	c.kmu.Lock()
	if !c.closing {
		_ = c.ws.SetReadDeadline(t)
	}
	c.kmu.Unlock()
}

// isTimeout reports whether err is one of our read deadlines expiring
// (hello, identification, pong). The kernel giving up on a TCP
// connection (ETIMEDOUT) is not one: that connection was lost.
//
// gorilla/websocket replaces every timeout error by one of its own that
// keeps only the text, and ETIMEDOUT also "is" os.ErrDeadlineExceeded,
// so the text tells them apart: a deadline's ends in "i/o timeout", the
// kernel's in "connection timed out".
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() && strings.HasSuffix(err.Error(), os.ErrDeadlineExceeded.Error())
}

// endedByPeer reports whether err is the peer closing or the connection
// dropping: reset, broken pipe, the kernel's TCP timeout... (as opposed
// to our deadline or a protocol failure).
func endedByPeer(err error) bool {
	var ce *websocket.CloseError
	var ne net.Error
	return errors.As(err, &ce) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || (errors.As(err, &ne) && !isTimeout(err))
}

// readFailed ends the connection after a fatal error from next, with the
// close code that fits, and returns why it ended, in words for the other
// party (a user whose card this was).
func (c *conn) readFailed(err error) string {
	why := c.readFailedClose(err)
	c.noteEnd(why)
	return why
}

// readFailedClose is readFailed without the bookkeeping.
func (c *conn) readFailedClose(err error) string {
	c.log().Debug("read failed", "err", err)
	c.kmu.Lock()
	keepalive, closing, why := c.awaitPong, c.closing, c.reason
	c.kmu.Unlock()
	peer := "user"
	if c.role == roleCard {
		peer = "card agent"
	}
	var big errTooBig
	var ce *websocket.CloseError
	switch {
	case closing:
		return why
	case errors.As(err, &big):
		c.problem(ProblemTooBig)
		c.fail(websocket.CloseMessageTooBig, big.Error(), big.Error())
		return big.Error()
	case errors.Is(err, errBadUTF8):
		c.problem(ProblemBadMessage)
		c.fail(websocket.CloseInvalidFramePayloadData, errBadUTF8.Error(), errBadUTF8.Error()+": WSRC messages are JSON text")
		return errBadUTF8.Error()
	case errors.As(err, &ce) && ce.Code != websocket.CloseAbnormalClosure:
		// A close frame, whatever its code: the peer meant to go.
		return "the " + peer + " closed the connection"
	case endedByPeer(err): // no close frame (1006), EOF, reset
		c.lost.Store(true)
		return "the " + peer + "'s connection was lost"
	case isTimeout(err) && keepalive:
		c.lost.Store(true)
		c.problem(ProblemKeepalive)
		c.closeNow(websocket.CloseInternalServerErr, "keepalive ping timeout")
		return "the " + peer + " stopped answering keepalive pings"
	default:
		// A WebSocket framing error (gorilla's texts name no address);
		// whatever it is, it is logged above and not passed on.
		c.closeNow(websocket.CloseProtocolError, closeReason(err.Error()))
		return "the " + peer + " broke the WebSocket protocol"
	}
}
