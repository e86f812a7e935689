package protocol

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
)

// wire holds the fields of any message, undecoded, so that each message
// type checks exactly the fields it needs and a stray field of the wrong
// type elsewhere does no harm.
type wire struct {
	MsgType    json.RawMessage `json:"msg_type"`
	ClientType json.RawMessage `json:"client_type"`
	ATR        json.RawMessage `json:"atr"`
	Agent      json.RawMessage `json:"agent"`
	Reader     json.RawMessage `json:"reader"`
	Version    json.RawMessage `json:"version"`
	Cards      json.RawMessage `json:"cards"`
	IDType     json.RawMessage `json:"id_type"`
	IDStr      json.RawMessage `json:"id_str"`
	Identities json.RawMessage `json:"identities"`
	Command    json.RawMessage `json:"command"`
	Response   json.RawMessage `json:"response"`
	SW         json.RawMessage `json:"sw"`
	NewState   json.RawMessage `json:"new_state"`
	Message    json.RawMessage `json:"message"`
	Limit      json.RawMessage `json:"limit"`
	Total      json.RawMessage `json:"total"`
}

// Decode parses one frame into a typed message. Errors are *DecodeError;
// for an unknown msg_type the error wraps ErrUnknownType and its Type field
// holds the unknown type.
func Decode(data []byte) (Message, error) {
	data = bytes.TrimSpace(data)
	if len(data) == 0 || data[0] != '{' {
		return nil, &DecodeError{Reason: "not a JSON object"}
	}
	// The wire struct lives inside d, not behind a pointer: escape
	// analysis would otherwise move it to the heap (360 bytes per frame).
	var d decoder
	w := &d.w
	if !scanFlat(data, w) {
		// The general path. Keys are matched exactly, as pySim (Python
		// dicts) does; encoding/json's struct decoding would fold case.
		*w = wire{}
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(data, &fields); err != nil {
			return nil, &DecodeError{Reason: "malformed JSON: " + jsonReason(err), Err: err}
		}
		for k, v := range fields {
			if f := w.field([]byte(k)); f != nil {
				*f = v
			}
		}
	}
	if w.MsgType == nil {
		return nil, &DecodeError{Reason: `missing field "msg_type"`}
	}
	var t string
	if p, ok := plainString(w.MsgType); ok {
		t = knownType(p) // no allocation for the types we know
	} else {
		t = d.str("msg_type", w.MsgType, true)
	}
	if d.err != nil {
		return nil, &DecodeError{Reason: `field "msg_type" must be a string`}
	}
	d.t = t
	m := d.message()
	if d.err != nil {
		return nil, d.err
	}
	return m, nil
}

func jsonReason(err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("%s (at byte %d)", se.Error(), se.Offset)
	}
	return err.Error()
}

// knownType returns the msg_type constant spelled p, or p as a new string.
func knownType(p []byte) string {
	switch string(p) {
	case TypeCAPDU:
		return TypeCAPDU
	case TypeRAPDU:
		return TypeRAPDU
	case TypeResetReq:
		return TypeResetReq
	case TypeResetResp:
		return TypeResetResp
	case TypeHello:
		return TypeHello
	case TypeHelloAck:
		return TypeHelloAck
	case TypeListCards:
		return TypeListCards
	case TypeListCardsAck:
		return TypeListCardsAck
	case TypeSelectCard:
		return TypeSelectCard
	case TypeSelectCardAck:
		return TypeSelectCardAck
	case TypeStateNotification:
		return TypeStateNotification
	case TypePrint:
		return TypePrint
	case TypeDisconnect:
		return TypeDisconnect
	case TypeDisconnectAck:
		return TypeDisconnectAck
	case TypeError:
		return TypeError
	}
	return string(p)
}

type decoder struct {
	w   wire
	t   string
	err *DecodeError
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = &DecodeError{Type: d.t, Reason: fmt.Sprintf(format, args...)}
	}
}

func (d *decoder) message() Message {
	w := &d.w
	switch d.t {
	case TypeHello:
		m := Hello{ClientType: d.str("client_type", w.ClientType, true)}
		if m.ClientType == ClientCard || w.ATR != nil {
			m.ATR = d.hex("atr", w.ATR, m.ClientType == ClientCard)
		}
		m.Agent = d.str("agent", w.Agent, false)
		m.Reader = d.str("reader", w.Reader, false)
		m.Version = d.str("version", w.Version, false)
		return m
	case TypeHelloAck:
		return HelloAck{}
	case TypeListCards:
		m := ListCards{Agent: d.str("agent", w.Agent, false), Reader: d.str("reader", w.Reader, false),
			IDType: d.str("id_type", w.IDType, false), IDStr: d.str("id_str", w.IDStr, false), Limit: d.count("limit", w.Limit)}
		if d.err == nil && (m.IDType == "") != (m.IDStr == "") {
			d.fail(`fields "id_type" and "id_str" go together`)
		}
		return m
	case TypeListCardsAck:
		return ListCardsAck{Cards: d.cards(w.Cards), Total: d.count("total", w.Total)}
	case TypeSelectCard:
		return SelectCard{IDType: d.str("id_type", w.IDType, true), IDStr: d.str("id_str", w.IDStr, true)}
	case TypeSelectCardAck:
		return SelectCardAck{Identities: d.identities(w.Identities, true)}
	case TypeCAPDU:
		m := CAPDU{Command: d.hex("command", w.Command, true)}
		if d.err == nil && len(m.Command) < 4 {
			d.fail(`field "command" must hold at least 4 bytes (CLA INS P1 P2), got %d`, len(m.Command))
		}
		return m
	case TypeRAPDU:
		m := RAPDU{Response: d.hex("response", w.Response, true)}
		sw := d.hex("sw", w.SW, true)
		if d.err == nil && len(sw) != 2 {
			d.fail(`field "sw" must be 4 hex digits, got %d`, 2*len(sw))
		}
		if len(sw) == 2 {
			m.SW = uint16(sw[0])<<8 | uint16(sw[1])
		}
		if m.Response == nil {
			m.Response = []byte{}
		}
		return m
	case TypeResetReq:
		return ResetReq{}
	case TypeResetResp:
		return ResetResp{ATR: d.hex("atr", w.ATR, false)}
	case TypeStateNotification:
		return StateNotification{NewState: d.str("new_state", w.NewState, true)}
	case TypePrint:
		return Print{Message: d.str("message", w.Message, true)}
	case TypeDisconnect:
		return Disconnect{}
	case TypeDisconnectAck:
		return DisconnectAck{}
	case TypeError:
		return Error{Message: d.str("message", w.Message, false)}
	}
	d.err = &DecodeError{Type: d.t, Reason: fmt.Sprintf("unknown msg_type %q", d.t), Err: ErrUnknownType}
	return nil
}

func isNull(raw json.RawMessage) bool { return string(raw) == "null" }

func (d *decoder) str(name string, raw json.RawMessage, required bool) string {
	if raw == nil || isNull(raw) {
		if required {
			d.fail("missing field %q", name)
		}
		return ""
	}
	if p, ok := plainString(raw); ok {
		return string(p)
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		d.fail("field %q must be a string", name)
		return ""
	}
	return s
}

// count decodes an optional non-negative integer field (0 when absent).
func (d *decoder) count(name string, raw json.RawMessage) int {
	if raw == nil || isNull(raw) {
		return 0
	}
	var n int64
	if err := json.Unmarshal(raw, &n); err != nil || n < 0 || n > math.MaxInt32 {
		d.fail("field %q must be a whole number from 0 to %d", name, math.MaxInt32)
		return 0
	}
	return int(n)
}

// hex decodes a hex string field. A present-but-empty string gives a
// non-nil empty slice.
func (d *decoder) hex(name string, raw json.RawMessage, required bool) []byte {
	if p, ok := plainString(raw); ok {
		b, err := decodeHexBytes(p)
		if err != nil {
			d.fail("field %q: %v", name, err)
		}
		return b
	}
	s := d.str(name, raw, required)
	if d.err != nil || raw == nil || isNull(raw) {
		return nil
	}
	b, err := DecodeHex(s)
	if err != nil {
		d.fail("field %q: %v", name, err)
		return nil
	}
	return b
}

func (d *decoder) identities(raw json.RawMessage, required bool) Identities {
	if raw == nil || isNull(raw) {
		if required {
			d.fail(`missing field "identities"`)
		}
		return nil
	}
	var ids Identities
	if err := json.Unmarshal(raw, &ids); err != nil {
		d.fail(`field "identities" must be an object of strings`)
		return nil
	}
	return ids
}

func (d *decoder) cards(raw json.RawMessage) []CardInfo {
	if raw == nil || isNull(raw) {
		d.fail(`missing field "cards"`)
		return nil
	}
	var list []struct {
		RemoteAddr []json.RawMessage `json:"remote_addr"`
		Identities json.RawMessage   `json:"identities"`
		State      json.RawMessage   `json:"state"`
		Agent      json.RawMessage   `json:"agent"`
		Reader     json.RawMessage   `json:"reader"`
	}
	if err := json.Unmarshal(raw, &list); err != nil {
		d.fail(`field "cards" must be a list of card objects`)
		return nil
	}
	cards := make([]CardInfo, 0, len(list))
	for _, c := range list {
		ci := CardInfo{
			Identities: d.identities(c.Identities, true),
			State:      d.str("state", c.State, true),
			Agent:      d.str("agent", c.Agent, false),
			Reader:     d.str("reader", c.Reader, false),
		}
		if len(c.RemoteAddr) >= 2 {
			_ = json.Unmarshal(c.RemoteAddr[0], &ci.RemoteAddr.IP)
			_ = json.Unmarshal(c.RemoteAddr[1], &ci.RemoteAddr.Port)
		}
		cards = append(cards, ci)
	}
	return cards
}

// DecodeHex decodes a hex string of either case, with a precise error for
// odd length or a bad digit.
func DecodeHex(s string) ([]byte, error) {
	return decodeHexBytes([]byte(s))
}

func decodeHexBytes(s []byte) ([]byte, error) {
	if len(s)%2 != 0 {
		return nil, fmt.Errorf("odd number of hex digits (%d)", len(s))
	}
	b := make([]byte, len(s)/2)
	if _, err := hex.Decode(b, s); err != nil {
		var ie hex.InvalidByteError
		if errors.As(err, &ie) {
			i := bytes.IndexByte(s, byte(ie))
			return nil, fmt.Errorf("invalid hex digit %q at position %d", rune(ie), i)
		}
		return nil, fmt.Errorf("invalid hex: %w", err)
	}
	return b, nil
}
