package protocol

import "encoding/json"

// scanFlat fills w from data when data is a flat JSON object whose values
// are all plain strings (ASCII, no escapes) — which every hot-path message
// is. The fields of w then alias data, with no copying. It reports false for
// anything else (nested values, numbers, escapes, non-ASCII, any syntax
// error), and the caller falls back to encoding/json, which then also
// produces the precise syntax error. Duplicate keys keep the last value, as
// encoding/json does.
func scanFlat(data []byte, w *wire) bool {
	i := skipWS(data, 0)
	if i >= len(data) || data[i] != '{' {
		return false
	}
	i = skipWS(data, i+1)
	if i < len(data) && data[i] == '}' {
		return skipWS(data, i+1) == len(data)
	}
	for {
		ks, ke, ok := scanString(data, i)
		if !ok {
			return false
		}
		i = skipWS(data, ke)
		if i >= len(data) || data[i] != ':' {
			return false
		}
		i = skipWS(data, i+1)
		vs, ve, ok := scanString(data, i)
		if !ok {
			return false
		}
		if f := w.field(data[ks+1 : ke-1]); f != nil {
			*f = data[vs:ve]
		}
		i = skipWS(data, ve)
		if i >= len(data) {
			return false
		}
		switch data[i] {
		case ',':
			i = skipWS(data, i+1)
		case '}':
			return skipWS(data, i+1) == len(data)
		default:
			return false
		}
	}
}

// scanString returns the bounds of the quoted string at data[i:], quotes
// included, if it is a plain ASCII string without escapes.
func scanString(data []byte, i int) (start, end int, ok bool) {
	if i >= len(data) || data[i] != '"' {
		return 0, 0, false
	}
	for j := i + 1; j < len(data); j++ {
		switch c := data[j]; {
		case c == '"':
			return i, j + 1, true
		case c == '\\' || c < 0x20 || c >= 0x80:
			return 0, 0, false
		}
	}
	return 0, 0, false
}

func skipWS(data []byte, i int) int {
	for i < len(data) {
		switch data[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// field maps a key to the wire field that holds it; nil for unknown keys.
func (w *wire) field(key []byte) *json.RawMessage {
	switch string(key) { // no allocation: the compiler optimises this switch
	case "msg_type":
		return &w.MsgType
	case "client_type":
		return &w.ClientType
	case "atr":
		return &w.ATR
	case "agent":
		return &w.Agent
	case "reader":
		return &w.Reader
	case "version":
		return &w.Version
	case "cards":
		return &w.Cards
	case "id_type":
		return &w.IDType
	case "id_str":
		return &w.IDStr
	case "identities":
		return &w.Identities
	case "command":
		return &w.Command
	case "response":
		return &w.Response
	case "sw":
		return &w.SW
	case "new_state":
		return &w.NewState
	case "message":
		return &w.Message
	case "limit":
		return &w.Limit
	case "total":
		return &w.Total
	}
	return nil
}

// plainString returns the contents of raw if it is a quoted string without
// escapes (as scanFlat produces), without decoding.
func plainString(raw json.RawMessage) ([]byte, bool) {
	if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return nil, false
	}
	s := raw[1 : len(raw)-1]
	for _, c := range s {
		if c == '\\' || c == '"' || c < 0x20 || c >= 0x80 {
			return nil, false
		}
	}
	return s, true
}
