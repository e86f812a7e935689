package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/internal/version"
	"github.com/wsrc-go/wsrc/protocol"
)

// Config is what all the sessions of one agent share.
type Config struct {
	// Server is the URL of the server's card port: ws://host:4221/ or
	// wss://host:4221/.
	Server string
	// Agent names this agent (its host name) in hello; empty omits it.
	Agent string
	// Logger receives the sessions' logs; nil means slog.Default().
	Logger *slog.Logger
	// Timing holds the intervals; zero fields take DefaultTiming.
	Timing Timing
	// Dialer dials the server; nil means a zero websocket.Dialer. Its
	// HandshakeTimeout is replaced by Timing.DialTimeout, and its
	// TLSClientConfig by TLS when that is set. Tests set its
	// NetDialContext to reach an in-memory server.
	Dialer *websocket.Dialer
	// TLS configures wss:// connections (see TLSOptions.Config); nil
	// verifies the server against the system roots.
	TLS *tls.Config
	// Token is the agent's token, sent in every upgrade request as
	// "Authorization: Bearer <token>"; empty sends none. It is never
	// logged.
	Token string
}

// ErrBadServerURL is wrapped by Run's error when Config.Server cannot be
// dialled at all (not a ws:// or wss:// URL); Run does not retry it.
var ErrBadServerURL = errors.New("bad server URL")

// ErrUnauthorized is wrapped by a dial error when the server refused the
// upgrade with 401: the agent's token is missing, wrong or revoked.
// Session.Run logs it plainly and retries with its usual backoff, since
// the server's configuration may change.
var ErrUnauthorized = errors.New("server refused the agent token")

// ErrThrottled is wrapped by a dial error when the server refused the
// upgrade with 429 after too many failed logins from this address; the
// next attempt waits at least as long as the server's Retry-After says.
var ErrThrottled = errors.New("server is refusing this address after failed logins")

// refusedError is a dial refused by the server's HTTP answer.
type refusedError struct {
	err        error         // ErrUnauthorized or ErrThrottled
	status     string        // e.g. "401 Unauthorized"
	retryAfter time.Duration // from Retry-After, 0 if none
	hint       string
}

func (e *refusedError) Error() string {
	msg := fmt.Sprintf("%v (HTTP %s)", e.err, e.status)
	if e.hint != "" {
		msg += ": " + e.hint
	}
	return msg
}

func (e *refusedError) Unwrap() error { return e.err }

// maxRetryAfter caps the wait a server's Retry-After can impose.
const maxRetryAfter = time.Hour

// errDisconnected ends a connection that the server asked to end.
var errDisconnected = errors.New("server sent disconnect")

// A Session connects one card to a WSRC server's card port and lets the
// server drive it: it sends hello (ATR, plus the agent, reader and version
// extensions), waits for hello_ack, then executes what the server asks:
// c_apdu → card.TransmitFollow → r_apdu{response, sw}; reset_req → warm
// reset → reset_resp{atr}; state_notification and print are logged;
// disconnect → disconnect_ack and close. A malformed or unknown message gets
// an error message and the session carries on. A card error is reported
// with an error message; when the card is gone (card.ErrRemoved) the
// session ends.
//
// Reconnect contract of [Session.Run]:
//   - Run dials at once. Every attempt is bounded by Timing.DialTimeout (TCP
//     connect and WebSocket handshake together), hello_ack by
//     Timing.HelloTimeout.
//   - When the server is unreachable, refuses the handshake or the hello,
//     or the connection breaks (read or write error, nothing heard for
//     Timing.PongWait although the agent pings every Timing.PingPeriod, a
//     close from the server), Run waits and dials again, forever. The waits
//     double from Timing.MinBackoff up to Timing.MaxBackoff, each drawn at
//     random from the upper half [d/2, d]; a connection that stayed up for
//     Timing.StableAfter resets them to the start.
//   - A refused upgrade is no different, but says why: HTTP 401 is logged
//     as "server refused the agent token" (ErrUnauthorized), HTTP 429 as
//     throttled (ErrThrottled), and then waits at least the server's
//     Retry-After.
//   - When the server sends disconnect, Run answers disconnect_ack, closes
//     the WebSocket (1000) and stays away for Timing.DisconnectHoldoff
//     before dialling again.
//   - Every wait is on a timer that also watches ctx: cancelling ctx ends
//     a wait, a dial or a card operation at once.
//   - When ctx is done, Run closes the WebSocket cleanly (close frame 1001
//     "going away", with context.Cause(ctx) as the reason when ctx was
//     cancelled with a cause, else "agent shutting down"; waiting up to
//     Timing.CloseWait for the server's close) and returns nil.
//   - When the card is removed (an error wrapping card.ErrRemoved), Run
//     sends an error message, closes the WebSocket and returns that error:
//     a session never outlives its card. Whoever owns the card decides what
//     comes next.
//   - Only a Server URL that can never work makes Run give up by itself
//     (ErrBadServerURL).
//
// Run never closes the Card: its owner does, after Run returned. One
// Session runs at a time per card; the card is used only by the goroutine
// that called Run.
type Session struct {
	// Immutable after NewSession.
	cfg    Config
	timing Timing
	card   card.Card
	reader string
	log    *slog.Logger
	// server is cfg.Server with any password masked, for logs and errors.
	server string
	// jitter returns a random duration in [0, d]; tests replace it.
	jitter func(d time.Duration) time.Duration
	// connected, when set (by the Manager), is told when the server has
	// accepted hello (true) and when that connection has ended (false).
	connected func(up bool)
}

// NewSession returns a Session that puts c on cfg.Server under the reader
// name reader (sent in hello, used in logs).
func NewSession(cfg Config, c card.Card, reader string) *Session {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if cfg.Dialer == nil {
		cfg.Dialer = &websocket.Dialer{}
	}
	return &Session{
		cfg:    cfg,
		timing: cfg.Timing.withDefaults(),
		card:   c,
		reader: reader,
		log:    log.With("reader", reader),
		server: redactURL(cfg.Server),
		jitter: randJitter,
	}
}

// redactURL masks the password of a URL's user information (a URL that
// does not parse is returned as it is: Run reports it as bad anyway).
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return s
	}
	return u.Redacted()
}

// Run connects the card to the server and serves it until ctx is done or
// the card is gone; see the reconnect contract in the Session doc. It
// returns nil when ctx ended it.
func (s *Session) Run(ctx context.Context) error {
	if err := CheckServerURL(s.cfg.Server); err != nil {
		return err
	}
	failures := 0
	for {
		up, err := s.connectOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, card.ErrRemoved) {
			return err
		}
		var delay time.Duration
		var refused *refusedError
		switch {
		case errors.Is(err, errDisconnected):
			delay = s.timing.DisconnectHoldoff
			failures = 0
			s.log.Info("server asked us to disconnect", "retry_in", delay)
		case errors.As(err, &refused):
			delay = max(s.timing.backoff(failures, s.jitter), refused.retryAfter)
			failures++
			s.log.Error(refused.err.Error(), "server", s.server, "status", refused.status,
				"hint", refused.hint, "retry_in", delay.Round(time.Millisecond))
		default:
			if up >= s.timing.StableAfter {
				failures = 0
			}
			delay = s.timing.backoff(failures, s.jitter)
			failures++
			s.log.Warn("connection to server failed", "err", err, "retry_in", delay.Round(time.Millisecond))
		}
		if !sleep(ctx.Done(), delay) {
			return nil
		}
	}
}

// CheckServerURL reports why s cannot be a card port URL (an error
// wrapping ErrBadServerURL), or nil: it must be ws:// or wss:// with a
// host, and without user information (gorilla/websocket refuses it; the
// agent authenticates with a token instead). Run checks it too; a
// program can check it at start.
func CheckServerURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrBadServerURL, err)
	}
	if u.Scheme != "ws" && u.Scheme != "wss" {
		return fmt.Errorf("%w %q: scheme must be ws or wss", ErrBadServerURL, u.Redacted())
	}
	if u.Host == "" {
		return fmt.Errorf("%w %q: no host", ErrBadServerURL, u.Redacted())
	}
	if u.User != nil {
		return fmt.Errorf("%w %q: user information in the URL is not supported; give the agent a token instead", ErrBadServerURL, u.Redacted())
	}
	return nil
}

// connectOnce dials, says hello and serves one connection. up is how long
// the connection stood after hello_ack (0 if it never got there).
func (s *Session) connectOnce(ctx context.Context) (up time.Duration, err error) {
	ws, err := s.dial(ctx)
	if err != nil {
		return 0, err
	}
	c := &conn{
		s:    s,
		ws:   ws,
		in:   make(chan frame),
		done: make(chan struct{}),
	}
	return c.serve(ctx)
}

// dial opens the WebSocket, bounded by DialTimeout and by ctx (the
// handshake itself only watches a deadline, so ctx cancellation is turned
// into one).
func (s *Session) dial(ctx context.Context) (*websocket.Conn, error) {
	d := *s.cfg.Dialer
	d.HandshakeTimeout = s.timing.DialTimeout
	if s.cfg.TLS != nil {
		d.TLSClientConfig = s.cfg.TLS
	}
	var header http.Header
	if s.cfg.Token != "" {
		header = http.Header{"Authorization": {"Bearer " + s.cfg.Token}}
	}
	netDial := d.NetDialContext
	if netDial == nil {
		netDial = (&net.Dialer{}).DialContext
	}
	var (
		mu sync.Mutex
		nc net.Conn // guarded by mu
	)
	d.NetDialContext = func(dctx context.Context, network, addr string) (net.Conn, error) {
		c, err := netDial(dctx, network, addr)
		mu.Lock()
		nc = c
		mu.Unlock()
		return c, err
	}
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if nc != nil {
			_ = nc.SetDeadline(time.Unix(1, 0)) // wake the handshake now
		}
	})
	ws, resp, err := d.DialContext(ctx, s.cfg.Server, header)
	if !stop() && err == nil {
		ws.Close()
		return nil, ctx.Err()
	}
	if err != nil {
		if resp != nil {
			if r := s.refused(resp); r != nil {
				return nil, r
			}
			return nil, fmt.Errorf("dialling %s: %w (HTTP %s)", s.server, err, resp.Status)
		}
		return nil, fmt.Errorf("dialling %s: %w", s.server, explainTLS(err))
	}
	return ws, nil
}

// refused classifies a refused upgrade: 401 and 429 are the server's
// authentication saying no; other statuses return nil.
func (s *Session) refused(resp *http.Response) *refusedError {
	switch resp.StatusCode {
	case http.StatusUnauthorized:
		hint := "check the agent's token (token, token_file or WSRC_AGENT_TOKEN) against the server's agent tokens"
		if s.cfg.Token == "" {
			hint = "the server requires an agent token and none is configured (token, token_file or WSRC_AGENT_TOKEN)"
		}
		return &refusedError{err: ErrUnauthorized, status: resp.Status, hint: hint}
	case http.StatusTooManyRequests:
		r := &refusedError{err: ErrThrottled, status: resp.Status, hint: "fix the token; the server blocks the address for a while"}
		if secs, err := strconv.Atoi(strings.TrimSpace(resp.Header.Get("Retry-After"))); err == nil && secs > 0 {
			r.retryAfter = min(time.Duration(secs)*time.Second, maxRetryAfter)
		}
		return r
	}
	return nil
}

// frame is one data message as read from the WebSocket.
type frame struct {
	typ  int
	data []byte
}

// conn is one WebSocket connection of a Session.
//
// Ownership: readLoop is the only reader of ws and the only sender on in
// (closed when it exits, readErr set before). pingLoop only calls
// ws.WriteControl, which gorilla allows next to other writers. Everything
// else, including every data write and the card, belongs to the goroutine
// running serve.
type conn struct {
	s       *Session
	ws      *websocket.Conn
	in      chan frame    // readLoop → serve
	readErr error         // set by readLoop before it closes in
	done    chan struct{} // closed by serve when it returns: stop readLoop, pingLoop
	wg      sync.WaitGroup
}

// serve runs the hello exchange and then the message loop until the
// connection ends.
func (c *conn) serve(ctx context.Context) (up time.Duration, err error) {
	t := c.s.timing
	c.ws.SetReadLimit(protocol.MaxFrameSize)
	c.ws.SetPongHandler(func(string) error {
		return c.ws.SetReadDeadline(time.Now().Add(t.PongWait))
	})
	c.wg.Go(c.readLoop)
	defer func() {
		close(c.done)
		c.ws.Close()
		c.wg.Wait()
	}()

	if err := c.hello(ctx); err != nil {
		if ctx.Err() != nil {
			c.close(websocket.CloseGoingAway, goingAwayReason(ctx))
		} else {
			c.close(websocket.CloseProtocolError, err.Error())
		}
		return 0, err
	}
	start := time.Now()
	c.s.log.Info("connected to server", "server", c.s.server, "atr", fmt.Sprintf("%x", c.s.card.ATR()))
	if c.s.connected != nil {
		c.s.connected(true)
		defer c.s.connected(false)
	}
	c.wg.Go(c.pingLoop)

	for {
		select {
		case <-ctx.Done():
			c.close(websocket.CloseGoingAway, goingAwayReason(ctx))
			return time.Since(start), ctx.Err()
		case f, ok := <-c.in:
			if !ok {
				return time.Since(start), fmt.Errorf("connection lost: %w", c.readErr)
			}
			if err := c.handle(ctx, f); err != nil {
				switch {
				case errors.Is(err, errDisconnected):
					c.close(websocket.CloseNormalClosure, "disconnect requested by server")
				case errors.Is(err, card.ErrRemoved):
					c.close(websocket.CloseGoingAway, "card removed")
				case ctx.Err() != nil:
					c.close(websocket.CloseGoingAway, goingAwayReason(ctx))
				}
				return time.Since(start), err
			}
		}
	}
}

// hello sends hello and waits for hello_ack.
func (c *conn) hello(ctx context.Context) error {
	s := c.s
	err := c.send(protocol.Hello{
		ClientType: protocol.ClientCard,
		ATR:        s.card.ATR(),
		Agent:      s.cfg.Agent,
		Reader:     s.reader,
		Version:    version.Version,
	})
	if err != nil {
		return fmt.Errorf("sending hello: %w", err)
	}
	timer := time.NewTimer(s.timing.HelloTimeout)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return fmt.Errorf("no hello_ack within %v", s.timing.HelloTimeout)
	case f, ok := <-c.in:
		if !ok {
			return fmt.Errorf("waiting for hello_ack: %w", c.readErr)
		}
		m, err := protocol.Decode(f.data)
		if err != nil {
			return fmt.Errorf("waiting for hello_ack: %w", err)
		}
		switch m := m.(type) {
		case protocol.HelloAck:
			return nil
		case protocol.Error:
			return fmt.Errorf("server refused hello: %s", m.Message)
		default:
			return fmt.Errorf("server answered hello with %s, want hello_ack", m.MsgType())
		}
	}
}

// handle executes one frame from the server and sends the answer. It
// returns nil to go on, or why the connection must end.
func (c *conn) handle(ctx context.Context, f frame) error {
	reply, end := c.s.answer(ctx, f)
	if reply != nil {
		if err := c.send(reply); err != nil {
			if end != nil {
				c.s.log.Debug("sending last message", "err", err)
				return end
			}
			return err
		}
	}
	return end
}

// answer executes one frame from the server on the card. It returns the
// message to send back (nil for none) and, when the connection must end
// after it, why: errDisconnected, an error wrapping card.ErrRemoved, or
// ctx's error. It knows nothing about sockets.
func (s *Session) answer(ctx context.Context, f frame) (reply protocol.Message, end error) {
	log := s.log
	if f.typ != websocket.TextMessage {
		log.Warn("binary frame from server")
		return protocol.Error{Message: "binary frames are not supported: send JSON text frames"}, nil
	}
	m, err := protocol.Decode(f.data)
	if err != nil {
		var de *protocol.DecodeError
		if errors.As(err, &de) && errors.Is(err, protocol.ErrUnknownType) {
			return s.unsupported(de.Type), nil
		}
		log.Warn("malformed message from server", "err", err)
		return protocol.Error{Message: err.Error()}, nil
	}
	switch m := m.(type) {
	case protocol.CAPDU:
		resp, err := card.TransmitFollow(ctx, s.card, m.Command)
		if err != nil {
			return s.cardFailed(ctx, "transmitting APDU", err)
		}
		r, ok := protocol.RAPDUOf(resp)
		if !ok { // TransmitFollow promises SW1 SW2; be sure
			return protocol.Error{Message: fmt.Sprintf("card answered %d bytes, no status word", len(resp))}, nil
		}
		return r, nil
	case protocol.ResetReq:
		atr, err := s.card.Reset(ctx, card.WarmReset)
		if err != nil {
			return s.cardFailed(ctx, "resetting card", err)
		}
		log.Info("card reset", "atr", fmt.Sprintf("%x", atr))
		return protocol.ResetResp{ATR: atr}, nil
	case protocol.StateNotification:
		log.Info("state notification", "state", m.NewState)
		return nil, nil
	case protocol.Print:
		log.Info("server message", "message", m.Message)
		return nil, nil
	case protocol.Disconnect:
		return protocol.DisconnectAck{}, errDisconnected
	case protocol.Error:
		// Never answer an error with an error: two peers could loop.
		log.Warn("error from server", "message", m.Message)
		return nil, nil
	default:
		return s.unsupported(m.MsgType()), nil
	}
}

func (s *Session) unsupported(msgType string) protocol.Message {
	s.log.Warn("unsupported message type from server", "msg_type", msgType)
	return protocol.Error{Message: fmt.Sprintf("message type %q is not supported by a card agent", msgType)}
}

// cardFailed turns a card error into the error message for the server.
// The connection ends when the card is gone (card.ErrRemoved) or ctx is
// done (then nothing is sent).
func (s *Session) cardFailed(ctx context.Context, what string, err error) (protocol.Message, error) {
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	err = fmt.Errorf("%s: %w", what, err)
	if errors.Is(err, card.ErrRemoved) {
		s.log.Warn("card removed", "err", err)
		return protocol.Error{Message: err.Error()}, err
	}
	s.log.Warn("card error", "err", err)
	return protocol.Error{Message: err.Error()}, nil
}

// send writes one message, bounded by WriteWait.
func (c *conn) send(m protocol.Message) error {
	if err := c.ws.SetWriteDeadline(time.Now().Add(c.s.timing.WriteWait)); err != nil {
		return fmt.Errorf("sending %s: %w", m.MsgType(), err)
	}
	if err := c.ws.WriteMessage(websocket.TextMessage, protocol.Encode(m)); err != nil {
		return fmt.Errorf("sending %s: %w", m.MsgType(), err)
	}
	return nil
}

// goingAwayReason is the close reason when ctx ended the connection: the
// cause the Manager gave (e.g. "card removed"), or "agent shutting down".
func goingAwayReason(ctx context.Context) string {
	cause := context.Cause(ctx)
	if cause == nil || errors.Is(cause, context.Canceled) || errors.Is(cause, context.DeadlineExceeded) {
		return "agent shutting down"
	}
	return cause.Error()
}

// maxCloseReason is the longest reason a close frame can carry (125
// bytes of payload less the 2-byte code), in bytes.
const maxCloseReason = 123

// close starts the close handshake and waits up to CloseWait for the
// server's close frame (readLoop ends when it arrives). Frames still
// arriving are dropped.
func (c *conn) close(code int, reason string) {
	t := c.s.timing
	if len(reason) > maxCloseReason {
		reason = strings.ToValidUTF8(reason[:maxCloseReason-3], "") + "..."
	}
	msg := websocket.FormatCloseMessage(code, reason)
	if err := c.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(t.WriteWait)); err != nil {
		return
	}
	timer := time.NewTimer(t.CloseWait)
	defer timer.Stop()
	for {
		select {
		case _, ok := <-c.in:
			if !ok {
				return
			}
		case <-timer.C:
			return
		}
	}
}

// readLoop reads frames and hands them to serve until the connection
// fails or serve is done.
func (c *conn) readLoop() {
	defer close(c.in)
	for {
		if err := c.ws.SetReadDeadline(time.Now().Add(c.s.timing.PongWait)); err != nil {
			c.readErr = err
			return
		}
		typ, data, err := c.ws.ReadMessage()
		if err != nil {
			c.readErr = err
			return
		}
		select {
		case c.in <- frame{typ, data}:
		case <-c.done:
			c.readErr = net.ErrClosed
			return
		}
	}
}

// pingLoop pings the server every PingPeriod so that a dead connection is
// noticed within PongWait.
func (c *conn) pingLoop() {
	t := c.s.timing
	tick := time.NewTicker(t.PingPeriod)
	defer tick.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-tick.C:
			if err := c.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(t.WriteWait)); err != nil {
				return
			}
		}
	}
}
