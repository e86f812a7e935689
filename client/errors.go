package client

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/gorilla/websocket"
)

// ErrClosed is wrapped by every error from a Client that can no longer be
// used: Close was called, or an earlier failure (lost connection, timeout,
// cancelled request, protocol violation) closed the connection. The cause,
// if any, is wrapped too.
var ErrClosed = errors.New("connection closed")

// ErrTimeout is wrapped by the error of a request that got no reply within
// the Client's request timeout (see [WithRequestTimeout]). The connection is
// closed, because a late reply would be taken for the answer to the next
// request.
var ErrTimeout = errors.New("no reply from the server in time")

// ServerError is an `error` message from the server: the server refused or
// could not carry out a request (unknown or busy card, no card selected,
// card disconnected, card timeout...). Message is the server's text,
// verbatim. The connection stays usable.
type ServerError struct {
	Message string
}

func (e *ServerError) Error() string { return "server: " + e.Message }

// ConnectionError reports that the connection to the server broke: the
// server closed it, or the network failed. The Client is closed.
type ConnectionError struct {
	// Code and Text are the close code and reason the server sent; Code
	// is 0 when the connection ended without a close frame.
	Code int
	Text string
	// Err is the underlying error.
	Err error
}

func (e *ConnectionError) Error() string {
	if e.Code == 0 {
		return fmt.Sprintf("connection lost: %v", e.Err)
	}
	s := "connection closed by the server (" + strconv.Itoa(e.Code)
	if name := closeCodeName(e.Code); name != "" {
		s += " " + name
	}
	s += ")"
	if e.Text != "" {
		s += ": " + e.Text
	}
	return s
}

func (e *ConnectionError) Unwrap() error { return e.Err }

func closeCodeName(code int) string {
	switch code {
	case websocket.CloseNormalClosure:
		return "normal closure"
	case websocket.CloseGoingAway:
		return "going away"
	case websocket.CloseProtocolError:
		return "protocol error"
	case websocket.CloseUnsupportedData:
		return "unsupported data"
	case websocket.CloseNoStatusReceived:
		return "no status"
	case websocket.CloseAbnormalClosure:
		return "abnormal closure"
	case websocket.CloseInvalidFramePayloadData:
		return "invalid payload"
	case websocket.ClosePolicyViolation:
		return "policy violation"
	case websocket.CloseMessageTooBig:
		return "message too big"
	case websocket.CloseInternalServerErr:
		return "internal error"
	case websocket.CloseServiceRestart:
		return "service restart"
	case websocket.CloseTryAgainLater:
		return "try again later"
	}
	return ""
}

// ProtocolError reports a reply that breaks the protocol: not valid JSON,
// a malformed message, a binary frame, a frame over the size limit, or a
// message of the wrong type for the request (including one that arrived
// when no request was outstanding). The Client is closed, since it can no
// longer tell which reply answers which request.
type ProtocolError struct {
	Request string // msg_type of the request being answered; "" if none was outstanding
	Reason  string
	Err     error // underlying error, e.g. a *protocol.DecodeError; may be nil
}

func (e *ProtocolError) Error() string {
	if e.Request == "" {
		return "protocol error: " + e.Reason
	}
	return "protocol error in reply to " + e.Request + ": " + e.Reason
}

func (e *ProtocolError) Unwrap() error { return e.Err }

// HandshakeError reports that the server refused the WebSocket upgrade
// with an HTTP status, e.g. 401 when authentication is required.
type HandshakeError struct {
	StatusCode int
	Status     string // e.g. "401 Unauthorized"
	Body       string // start of the response body, if any
}

func (e *HandshakeError) Error() string {
	s := "websocket handshake refused: " + e.Status
	if e.Body != "" {
		s += ": " + e.Body
	}
	return s
}
