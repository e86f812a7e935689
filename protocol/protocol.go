// Package protocol is the WSRC wire format: the JSON messages that card
// agents, the server and users exchange over WebSocket, as pySim speaks them.
//
// Every message is one JSON object in one text frame, with a string field
// "msg_type". Binary values travel as hex strings (lower case when we send;
// either case accepted). The package knows nothing about sockets: it turns
// bytes into typed messages ([Decode]) and typed messages into bytes
// ([Encode]), and both server/, agent/ and client/ use it.
//
// Flow, card side:
//
//	card → server  hello{client_type:"card", atr}
//	server → card  hello_ack
//	server → card  c_apdu ... (identification: SELECT ISD-R, GET EID, SELECT MF/EF.ICCID, READ BINARY)
//	card → server  r_apdu ...
//	server → card  state_notification{new_state:"ready"}
//	... then c_apdu/r_apdu and reset_req/reset_resp on behalf of one associated user,
//	state_notification on every association change, print, disconnect/disconnect_ack.
//
// Flow, user side:
//
//	user → server  hello{client_type:"user"}
//	server → user  hello_ack
//	user → server  list_cards           → list_cards_ack{cards}
//	user → server  select_card{id_type, id_str} → select_card_ack{identities} | error
//	user → server  c_apdu{command}      → r_apdu{response, sw} | error
//	user → server  reset_req            → reset_resp | error
//
// Encoding mirrors Python's json.dumps (", " and ": " separators, non-ASCII
// escaped, msg_type last) so our frames are byte-for-byte what pySim's server
// sends. Decoding is strict about the types and hex of the fields a message
// needs, and ignores fields it does not know, so a newer peer's extensions
// pass through harmlessly. docs/protocol.md is the full specification.
package protocol

import (
	"errors"
	"fmt"
)

// Default TCP ports, as in pySim.
const (
	DefaultUserPort = 4220
	DefaultCardPort = 4221
)

// MaxFrameSize is the largest WebSocket message we accept by default. The
// largest legitimate message is an extended-length APDU (65 544 bytes of
// command, 65 538 of response) in hex: about 131 KiB plus framing.
const MaxFrameSize = 160 << 10

// Message types.
const (
	TypeHello             = "hello"
	TypeHelloAck          = "hello_ack"
	TypeListCards         = "list_cards"
	TypeListCardsAck      = "list_cards_ack"
	TypeSelectCard        = "select_card"
	TypeSelectCardAck     = "select_card_ack"
	TypeCAPDU             = "c_apdu"
	TypeRAPDU             = "r_apdu"
	TypeResetReq          = "reset_req"
	TypeResetResp         = "reset_resp"
	TypeStateNotification = "state_notification"
	TypePrint             = "print"
	TypeDisconnect        = "disconnect"
	TypeDisconnectAck     = "disconnect_ack"
	TypeError             = "error"
)

// Client types sent in hello.
const (
	ClientCard = "card"
	ClientUser = "user"
)

// Card states as the server reports them in list_cards_ack and
// state_notification.
const (
	StateInit       = "init"       // connected, being identified
	StateReady      = "ready"      // identified, free to be selected
	StateAssociated = "associated" // selected by a user
)

// Identity keys as they appear in "identities" objects. pySim uses exactly
// these upper-case spellings; IMSI is our extension.
const (
	IdentityATR   = "ATR"
	IdentityEID   = "EID"
	IdentityICCID = "ICCID"
	IdentityIMSI  = "IMSI"
)

// Message is any WSRC message.
type Message interface {
	// MsgType returns the value of the msg_type field.
	MsgType() string
}

// Hello opens every connection. Cards send their ATR; users send none.
// Agent, Reader and Version are our extensions (ignored by pySim).
type Hello struct {
	ClientType string
	ATR        []byte // card only; required for cards
	Agent      string // extension: agent host name
	Reader     string // extension: reader name and slot
	Version    string // extension: software version
}

// HelloAck acknowledges hello.
type HelloAck struct{}

// ListCards asks for the cards a user may select. pySim sends no
// fields; the fields are our extension, for deployments with many cards
// (a pySim server ignores them and lists every card). Each one set
// narrows the list: Agent and Reader match exactly, IDType and IDStr as
// select_card matches, and Limit (when > 0) caps the number of cards
// returned.
type ListCards struct {
	Agent  string
	Reader string
	IDType string
	IDStr  string
	Limit  int
}

// Filtered reports whether m asks for less than the whole list.
func (m ListCards) Filtered() bool { return m != ListCards{} }

// ListCardsAck answers ListCards.
type ListCardsAck struct {
	Cards []CardInfo
	// Total is our extension, sent only in answer to a Filtered request:
	// how many cards matched before the limit (len(Cards) when none was
	// cut). 0 when not sent.
	Total int
}

// CardInfo describes one card in list_cards_ack.
type CardInfo struct {
	RemoteAddr RemoteAddr // the agent's network address
	Identities Identities
	State      string
	// Extensions (omitted when empty):
	Agent  string // agent host name from hello
	Reader string // reader name from hello
}

// RemoteAddr is a network address, encoded as pySim does: [ip, port].
type RemoteAddr struct {
	IP   string
	Port int
}

// Identities maps identity keys (ATR, EID, ICCID, IMSI...) to lower-case
// hex or digit strings. Encoded with ATR, EID, ICCID first, the rest sorted.
type Identities map[string]string

// SelectCard asks the server to associate the user with one card. IDType is
// any identity key, case-insensitive ("eid", "ICCID", "atr").
type SelectCard struct {
	IDType string
	IDStr  string
}

// SelectCardAck confirms an association and gives the card's identities.
type SelectCardAck struct {
	Identities Identities
}

// CAPDU carries one command APDU, user → server → card.
type CAPDU struct {
	Command []byte
}

// RAPDU carries one response APDU, card → server → user. SW is the status
// word; Response is the data before it (may be empty).
type RAPDU struct {
	Response []byte
	SW       uint16
}

// RAPDUOf splits a response APDU as a card sends it (the data, then SW1
// and SW2) into an RAPDU whose Response shares resp's memory. ok is false
// when resp is too short to hold a status word.
func RAPDUOf(resp []byte) (r RAPDU, ok bool) {
	n := len(resp) - 2
	if n < 0 {
		return RAPDU{}, false
	}
	return RAPDU{Response: resp[:n:n], SW: uint16(resp[n])<<8 | uint16(resp[n+1])}, true
}

// Bytes returns the response APDU as a card sends it: the data followed
// by SW1 SW2, in a new slice.
func (r RAPDU) Bytes() []byte {
	return append(append(make([]byte, 0, len(r.Response)+2), r.Response...), byte(r.SW>>8), byte(r.SW))
}

// ResetReq asks for a card reset.
type ResetReq struct{}

// ResetResp answers ResetReq. ATR is the card's new ATR; cards always send
// it. pySim's server sends users none; we send it as an extension.
type ResetResp struct {
	ATR []byte
}

// StateNotification tells a card agent its new state.
type StateNotification struct {
	NewState string
}

// Print asks a card agent to log a message.
type Print struct {
	Message string
}

// Disconnect asks a card agent to end its session.
type Disconnect struct{}

// DisconnectAck answers Disconnect.
type DisconnectAck struct{}

// Error reports a failure to the peer. Message is a human-readable reason.
type Error struct {
	Message string
}

func (Hello) MsgType() string             { return TypeHello }
func (HelloAck) MsgType() string          { return TypeHelloAck }
func (ListCards) MsgType() string         { return TypeListCards }
func (ListCardsAck) MsgType() string      { return TypeListCardsAck }
func (SelectCard) MsgType() string        { return TypeSelectCard }
func (SelectCardAck) MsgType() string     { return TypeSelectCardAck }
func (CAPDU) MsgType() string             { return TypeCAPDU }
func (RAPDU) MsgType() string             { return TypeRAPDU }
func (ResetReq) MsgType() string          { return TypeResetReq }
func (ResetResp) MsgType() string         { return TypeResetResp }
func (StateNotification) MsgType() string { return TypeStateNotification }
func (Print) MsgType() string             { return TypePrint }
func (Disconnect) MsgType() string        { return TypeDisconnect }
func (DisconnectAck) MsgType() string     { return TypeDisconnectAck }
func (Error) MsgType() string             { return TypeError }

// Error lets an Error message be used as a Go error.
func (e Error) Error() string { return e.Message }

// ErrUnknownType is wrapped by Decode errors for a msg_type this package
// does not know. The caller may answer with an error and carry on.
var ErrUnknownType = errors.New("unknown msg_type")

// DecodeError describes why a frame is not a valid message. Type is the
// msg_type when it could be read, so the receiver can say which message was
// wrong.
type DecodeError struct {
	Type   string
	Reason string
	Err    error // optional underlying error (ErrUnknownType, JSON syntax)
}

func (e *DecodeError) Error() string {
	if e.Type != "" {
		return fmt.Sprintf("invalid %s message: %s", e.Type, e.Reason)
	}
	return "invalid message: " + e.Reason
}

func (e *DecodeError) Unwrap() error { return e.Err }
