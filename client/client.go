// Package client is the user side of WSRC: a Go program dials the
// server's user port, lists the cards that agents have connected, selects
// one, and exchanges APDUs with it (or resets it) as if it sat in a local
// reader. The wsrc command is built on it; pySim-shell speaks the same
// protocol with its own code.
//
// Data flow:
//
//	your program ──Client──► server (user port, ws://host:4220/) ──► agent ──► card
//
// # Protocol
//
// Every call is one request and one reply (package protocol has the
// messages): hello → hello_ack in [Dial], list_cards → list_cards_ack,
// select_card → select_card_ack, c_apdu → r_apdu, reset_req → reset_resp.
// The server answers a request it cannot carry out with an `error`
// message, which the call returns as a [*ServerError] holding the server's
// text verbatim; the connection stays usable.
//
// The protocol has no request IDs, so a reply is matched to its request
// only by order. Hence:
//   - Calls are serialised: a Client may be shared between goroutines, but
//     its requests go out one at a time.
//   - A call that gives up before its reply arrives (ctx cancelled, request
//     timeout) closes the connection: a late reply would otherwise be taken
//     as the answer to the next request. So does any reply that breaks the
//     protocol ([*ProtocolError]) and a broken connection
//     ([*ConnectionError]). The call that meets the failure returns its
//     cause; every later call returns an error wrapping [ErrClosed] and
//     that cause. Dial again to go on (and select the card again: the
//     server frees it when the connection ends).
//
// A Client owns one goroutine, which reads the connection all the time
// (so it answers the server's keepalive pings even while your program is
// idle) and hands each reply to the waiting call. Close ends it.
package client

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/internal/version"
	"github.com/wsrc-go/wsrc/protocol"
)

// MaxCommandLen is the length of the longest command APDU: an extended
// case 4 command (header, 3-byte Lc, 65535 bytes of data, 2-byte Le).
const MaxCommandLen = 4 + 3 + 65535 + 2

// Client is a connection to a WSRC server's user port. Create it with
// [Dial]; it is safe for concurrent use (requests are serialised).
type Client struct {
	conn *websocket.Conn
	cfg  *config
	log  *slog.Logger

	// reqMu serialises requests: it is held from sending a request until
	// its reply (or failure) has been taken.
	reqMu sync.Mutex

	// replies carries the reply to the one outstanding request from
	// readLoop to the requester. Capacity 1: readLoop never blocks on it,
	// since it sends at most one reply per request.
	replies chan reply

	// done is closed when readLoop has returned.
	done chan struct{}

	closeOnce sync.Once

	mu sync.Mutex // guards the fields below
	// waiting is the msg_type of the outstanding request, "" if none; set
	// by the requester, cleared by readLoop when it hands over a reply.
	waiting string
	// err is why the connection ended (ErrClosed after Close); set once.
	err error
}

// reply is one frame from the server as readLoop hands it over.
type reply struct {
	msg protocol.Message
	err error // a *ProtocolError when the frame is not a valid message
}

// Dial connects to the server at url (ws:// or wss://; http:// and
// https:// are taken to mean the same), and says hello as a user. A user
// name and password in the URL are sent as HTTP basic authentication.
// ctx bounds the connection set-up only.
func Dial(ctx context.Context, url string, opts ...Option) (*Client, error) {
	cfg := newConfig(opts)
	u, err := parseURL(url, cfg)
	if err != nil {
		return nil, err
	}
	d := websocket.Dialer{
		Proxy:            http.ProxyFromEnvironment,
		HandshakeTimeout: cfg.timeout,
		TLSClientConfig:  cfg.tls,
		NetDialContext:   cfg.netDial,
	}
	conn, resp, err := d.DialContext(ctx, u.String(), cfg.header)
	if err != nil {
		if errors.Is(err, websocket.ErrBadHandshake) && resp != nil {
			err = handshakeError(resp)
		}
		return nil, fmt.Errorf("connecting to %s: %w", u.Redacted(), err)
	}
	conn.SetReadLimit(cfg.readLimit)
	c := &Client{
		conn:    conn,
		cfg:     cfg,
		log:     cfg.logger.With("server", u.Redacted()),
		replies: make(chan reply, 1),
		done:    make(chan struct{}),
	}
	go c.readLoop()
	hello := protocol.Hello{ClientType: protocol.ClientUser, Version: version.Version}
	if _, err := call[protocol.HelloAck](ctx, c, hello); err != nil {
		c.Close()
		return nil, fmt.Errorf("saying hello to %s: %w", u.Redacted(), err)
	}
	c.log.Info("connected")
	return c, nil
}

// parseURL checks the server URL and moves user name and password from it
// into the Authorization header.
func parseURL(raw string, cfg *config) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("server URL: %w", err)
	}
	switch strings.ToLower(u.Scheme) {
	case "ws", "http":
		u.Scheme = "ws"
	case "wss", "https":
		u.Scheme = "wss"
	default:
		return nil, fmt.Errorf("server URL %q: scheme must be ws or wss", u.Redacted())
	}
	if u.Host == "" {
		return nil, fmt.Errorf("server URL %q: no host", u.Redacted())
	}
	if u.Path == "" {
		u.Path = "/"
	}
	if u.User != nil && !cfg.basicAuth {
		cfg.user = u.User.Username()
		cfg.pass, _ = u.User.Password()
		cfg.basicAuth = true
	}
	u.User = nil
	if cfg.basicAuth {
		cfg.header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(cfg.user+":"+cfg.pass)))
	}
	return u, nil
}

func handshakeError(resp *http.Response) error {
	he := &HandshakeError{StatusCode: resp.StatusCode, Status: resp.Status}
	if resp.Body != nil {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		he.Body = strings.TrimSpace(string(b))
	}
	return he
}

// ListCards returns the cards the server knows, in the server's order.
// pySim's server answers it only before a card is selected.
func (c *Client) ListCards(ctx context.Context) ([]protocol.CardInfo, error) {
	ack, err := call[protocol.ListCardsAck](ctx, c, protocol.ListCards{})
	if err != nil {
		return nil, fmt.Errorf("listing cards: %w", err)
	}
	return ack.Cards, nil
}

// ListCardsWhere lists the cards that q selects (our extension of
// list_cards: agent, reader, one identity, a limit; see
// [protocol.ListCards]) and how many matched in all, which is more than
// len(cards) when q.Limit cut the list. wsrc-server filters on its side;
// a server that does not know the filter (pySim's) sends every card, and
// the same filter is then applied here, so the result is the same.
func (c *Client) ListCardsWhere(ctx context.Context, q protocol.ListCards) (cards []protocol.CardInfo, total int, err error) {
	if (q.IDType == "") != (q.IDStr == "") {
		return nil, 0, errors.New("listing cards: identity type and value go together")
	}
	ack, err := call[protocol.ListCardsAck](ctx, c, q)
	if err != nil {
		return nil, 0, fmt.Errorf("listing cards: %w", err)
	}
	cards = ack.Cards[:0:0]
	for _, ci := range ack.Cards {
		if matches(ci, q) {
			cards = append(cards, ci)
		}
	}
	total = max(ack.Total, len(cards))
	if q.Limit > 0 && len(cards) > q.Limit {
		cards = cards[:q.Limit]
	}
	return cards, total, nil
}

// matches reports whether a listed card is one q selects.
func matches(ci protocol.CardInfo, q protocol.ListCards) bool {
	switch {
	case q.Agent != "" && ci.Agent != q.Agent, q.Reader != "" && ci.Reader != q.Reader:
		return false
	case q.IDType == "":
		return true
	}
	for k, v := range ci.Identities {
		if strings.EqualFold(k, q.IDType) {
			if strings.EqualFold(k, protocol.IdentityICCID) {
				return card.NormalizeICCID(v) == card.NormalizeICCID(q.IDStr)
			}
			return strings.EqualFold(v, q.IDStr)
		}
	}
	return false
}

// Select associates this connection with one card, chosen by an identity:
// idType is "iccid", "eid", "atr" or any other identity key the server
// knows (case-insensitive), idStr its value. It returns the card's
// identities. The card stays reserved for this connection until it ends.
func (c *Client) Select(ctx context.Context, idType, idStr string) (protocol.Identities, error) {
	if idType == "" || idStr == "" {
		return nil, errors.New("selecting card: identity type and value must not be empty")
	}
	ack, err := call[protocol.SelectCardAck](ctx, c, protocol.SelectCard{IDType: idType, IDStr: idStr})
	if err != nil {
		return nil, fmt.Errorf("selecting card %s=%s: %w", idType, idStr, err)
	}
	return ack.Identities, nil
}

// Transmit sends one command APDU (4 to [MaxCommandLen] bytes) to the
// selected card and returns the response data and status word. The server
// relays APDUs as they are; the card agent completes the response before
// it answers: on 61xx (or 9Fxx) it sends GET RESPONSE, on 6Cxx it sends
// the command again with the Le the card asked for, and returns the whole
// data with the final status word (wsrc-agent: card.TransmitFollow;
// pySim's card client does the same). So a 61xx or 6Cxx reaches the
// caller only from an agent that does not follow them.
func (c *Client) Transmit(ctx context.Context, command []byte) (response []byte, sw uint16, err error) {
	if len(command) < 4 || len(command) > MaxCommandLen {
		return nil, 0, fmt.Errorf("transmitting APDU: a command APDU has 4 to %d bytes, got %d", MaxCommandLen, len(command))
	}
	r, err := call[protocol.RAPDU](ctx, c, protocol.CAPDU{Command: command})
	if err != nil {
		return nil, 0, fmt.Errorf("transmitting APDU: %w", err)
	}
	return r.Response, r.SW, nil
}

// Reset resets the selected card and returns its new ATR. The ATR is nil
// when the server does not report it (pySim's server does not; ours does).
func (c *Client) Reset(ctx context.Context) (atr []byte, err error) {
	r, err := call[protocol.ResetResp](ctx, c, protocol.ResetReq{})
	if err != nil {
		return nil, fmt.Errorf("resetting card: %w", err)
	}
	return r.ATR, nil
}

// Done returns a channel that is closed when the connection has ended:
// the server closed it, it broke, a request failed in a way that closes
// it (see the package doc), or Close was called. A program that holds a
// card while idle (wsrc vpcd) learns from it that the server went away
// without sending a request. [Client.Err] then says why.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err returns why the connection ended (an error wrapping [ErrClosed]
// after Close), or nil while it is up.
func (c *Client) Err() error { return c.reason() }

// Close ends the connection with a normal close handshake, waiting a
// moment (at most 2s) for the server's answer and for the server to close
// the TCP connection, and stops the Client's goroutine. A call
// in progress returns an error wrapping [ErrClosed]. Close is safe to call
// more than once and always returns nil.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		if c.setErr(ErrClosed) {
			deadline := time.Now().Add(closeWait)
			msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")
			if c.conn.WriteControl(websocket.CloseMessage, msg, deadline) == nil {
				c.awaitServerClose(deadline)
			}
			_ = c.conn.Close()
		}
		<-c.done
		c.log.Info("closed")
	})
	return nil
}

// awaitServerClose waits until deadline for the server to end the
// connection after our close frame: its close frame ends readLoop, then,
// as RFC 6455 has it, the server closes the TCP connection first. A server
// that frees the selected card before that has freed it when Close
// returns, so the next connection can select the card at once.
func (c *Client) awaitServerClose(deadline time.Time) {
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-c.done:
	case <-t.C:
		return
	}
	// readLoop has returned: the raw connection is ours to read.
	nc := c.conn.NetConn()
	if nc.SetReadDeadline(deadline) == nil {
		_, _ = io.Copy(io.Discard, nc)
	}
}

// call sends req and waits for a reply of type T.
func call[T protocol.Message](ctx context.Context, c *Client, req protocol.Message) (T, error) {
	var zero T
	m, err := c.roundTrip(ctx, req)
	if err != nil {
		return zero, err
	}
	if t, ok := m.(T); ok {
		return t, nil
	}
	return zero, c.fail(&ProtocolError{
		Request: req.MsgType(),
		Reason:  fmt.Sprintf("got a %s message, want %s", m.MsgType(), zero.MsgType()),
	}, websocket.CloseProtocolError)
}

// roundTrip sends req and returns the server's reply: any valid message
// other than `error`, which becomes a *ServerError.
func (c *Client) roundTrip(ctx context.Context, req protocol.Message) (protocol.Message, error) {
	c.reqMu.Lock()
	defer c.reqMu.Unlock()
	if err := c.closedErr(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err // nothing sent: the connection stays usable
	}
	frame := protocol.Encode(req)
	c.mu.Lock()
	c.waiting = req.MsgType()
	c.mu.Unlock()
	c.log.Debug("send", "frame", string(frame))
	_ = c.conn.SetWriteDeadline(time.Now().Add(c.cfg.timeout))
	if err := c.conn.WriteMessage(websocket.TextMessage, frame); err != nil {
		return nil, c.fail(&ConnectionError{Err: err}, 0)
	}
	timer := time.NewTimer(c.cfg.timeout)
	defer timer.Stop()
	select {
	case r := <-c.replies:
		return c.take(r)
	case <-c.done:
		// readLoop hands over a reply before it exits: prefer it.
		select {
		case r := <-c.replies:
			return c.take(r)
		default:
			return nil, c.reason()
		}
	case <-ctx.Done():
		return nil, c.fail(fmt.Errorf("%s abandoned, connection closed: %w", req.MsgType(), ctx.Err()), websocket.CloseNormalClosure)
	case <-timer.C:
		return nil, c.fail(fmt.Errorf("%s: %w (%v), connection closed", req.MsgType(), ErrTimeout, c.cfg.timeout), websocket.CloseNormalClosure)
	}
}

// take turns a reply into roundTrip's result.
func (c *Client) take(r reply) (protocol.Message, error) {
	if r.err != nil {
		return nil, c.fail(r.err, websocket.CloseProtocolError)
	}
	if e, ok := r.msg.(protocol.Error); ok {
		return nil, &ServerError{Message: e.Message}
	}
	return r.msg, nil
}

// readLoop reads every frame from the server until the connection ends,
// handing replies to the outstanding request.
func (c *Client) readLoop() {
	defer close(c.done)
	for {
		typ, data, err := c.conn.ReadMessage()
		if err != nil {
			c.fail(c.readError(err), 0)
			return
		}
		c.log.Debug("recv", "frame", string(data))
		c.mu.Lock()
		req := c.waiting
		c.waiting = ""
		c.mu.Unlock()
		r := decodeReply(req, typ, data)
		if req != "" {
			c.replies <- r
			continue
		}
		if e, ok := r.msg.(protocol.Error); ok {
			c.log.Warn("server notice", "message", e.Message)
			if c.cfg.notice != nil {
				c.cfg.notice(e.Message)
			}
			continue
		}
		if r.err == nil {
			r.err = &ProtocolError{Reason: "unsolicited " + r.msg.MsgType() + " message"}
		}
		c.fail(r.err, websocket.CloseProtocolError)
		return
	}
}

func decodeReply(req string, typ int, data []byte) reply {
	if typ != websocket.TextMessage {
		return reply{err: &ProtocolError{Request: req, Reason: "binary frame; WSRC messages are text"}}
	}
	m, err := protocol.Decode(data)
	if err != nil {
		return reply{err: &ProtocolError{Request: req, Reason: err.Error(), Err: err}}
	}
	return reply{msg: m}
}

// readError classifies an error from reading the connection.
func (c *Client) readError(err error) error {
	if errors.Is(err, websocket.ErrReadLimit) {
		c.mu.Lock()
		req := c.waiting
		c.mu.Unlock()
		return &ProtocolError{Request: req, Reason: fmt.Sprintf("frame larger than %d bytes", c.cfg.readLimit), Err: err}
	}
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		if ce.Code == websocket.CloseAbnormalClosure {
			// gorilla's name for "no close frame": the TCP connection ended.
			return &ConnectionError{Err: io.ErrUnexpectedEOF}
		}
		return &ConnectionError{Code: ce.Code, Text: ce.Text, Err: err}
	}
	return &ConnectionError{Err: err}
}

// setErr records why the connection ended, unless that is known already.
// It reports whether it did.
func (c *Client) setErr(err error) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return false
	}
	c.err = err
	return true
}

// fail records err as the reason the connection ends, if it is the first,
// closes the connection (sending a close frame with code unless code is
// 0) and returns the recorded reason.
func (c *Client) fail(err error, code int) error {
	if c.setErr(err) {
		c.log.Warn("connection ends", "err", err)
		if code != 0 {
			reason := err.Error()
			if len(reason) > 120 {
				reason = strings.ToValidUTF8(reason[:120], "")
			}
			msg := websocket.FormatCloseMessage(code, reason)
			_ = c.conn.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
		}
		_ = c.conn.Close()
	}
	return c.reason()
}

// reason returns why the connection ended, nil while it has not.
func (c *Client) reason() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// closedErr returns nil while the connection is usable, else an error
// wrapping ErrClosed and the reason.
func (c *Client) closedErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.err == nil:
		return nil
	case errors.Is(c.err, ErrClosed):
		return c.err
	default:
		return fmt.Errorf("%w: %w", ErrClosed, c.err)
	}
}
