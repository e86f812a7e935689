package protocol

import (
	"encoding/hex"
	"sort"
	"strconv"
	"unicode/utf8"
)

// Encode returns the JSON encoding of m, formatted as Python's json.dumps
// formats it (pySim's own frames), with msg_type as the last key.
func Encode(m Message) []byte {
	return AppendEncode(make([]byte, 0, 64), m)
}

// AppendEncode appends the encoding of m to dst and returns the result.
func AppendEncode(dst []byte, m Message) []byte {
	e := encoder{b: append(dst, '{')}
	switch m := m.(type) {
	case Hello:
		if m.ATR != nil || m.ClientType == ClientCard {
			e.hex("atr", m.ATR)
		}
		e.str("client_type", m.ClientType)
		e.optStr("agent", m.Agent)
		e.optStr("reader", m.Reader)
		e.optStr("version", m.Version)
	case *Hello:
		return AppendEncode(dst, *m)
	case ListCards:
		e.optStr("agent", m.Agent)
		e.optStr("reader", m.Reader)
		e.optStr("id_type", m.IDType)
		e.optStr("id_str", m.IDStr)
		if m.Limit > 0 {
			e.key("limit")
			e.b = strconv.AppendInt(e.b, int64(m.Limit), 10)
		}
	case ListCardsAck:
		e.key("cards")
		e.b = append(e.b, '[')
		for i, c := range m.Cards {
			if i > 0 {
				e.b = append(e.b, ", "...)
			}
			e.card(c)
		}
		e.b = append(e.b, ']')
		if m.Total > 0 {
			e.key("total")
			e.b = strconv.AppendInt(e.b, int64(m.Total), 10)
		}
	case SelectCard:
		e.str("id_type", m.IDType)
		e.str("id_str", m.IDStr)
	case SelectCardAck:
		e.identities(m.Identities)
	case CAPDU:
		e.hex("command", m.Command)
	case RAPDU:
		e.hex("response", m.Response)
		e.key("sw")
		e.b = append(e.b, '"')
		e.b = appendHex16(e.b, m.SW)
		e.b = append(e.b, '"')
	case ResetResp:
		if m.ATR != nil {
			e.hex("atr", m.ATR)
		}
	case StateNotification:
		e.str("new_state", m.NewState)
	case Print:
		e.str("message", m.Message)
	case Error:
		e.str("message", m.Message)
	case *Error:
		e.str("message", m.Message)
	}
	e.str("msg_type", m.MsgType())
	return append(e.b, '}')
}

type encoder struct {
	b     []byte
	first bool // a key has been written
}

func (e *encoder) key(k string) {
	if e.first {
		e.b = append(e.b, ", "...)
	}
	e.first = true
	e.b = appendString(e.b, k)
	e.b = append(e.b, ": "...)
}

func (e *encoder) str(k, v string) {
	e.key(k)
	e.b = appendString(e.b, v)
}

func (e *encoder) optStr(k, v string) {
	if v != "" {
		e.str(k, v)
	}
}

func (e *encoder) hex(k string, v []byte) {
	e.key(k)
	e.b = append(e.b, '"')
	e.b = hex.AppendEncode(e.b, v)
	e.b = append(e.b, '"')
}

func (e *encoder) card(c CardInfo) {
	inner := encoder{b: append(e.b, '{')}
	inner.key("remote_addr")
	inner.b = append(inner.b, '[')
	inner.b = appendString(inner.b, c.RemoteAddr.IP)
	inner.b = append(inner.b, ", "...)
	inner.b = strconv.AppendInt(inner.b, int64(c.RemoteAddr.Port), 10)
	inner.b = append(inner.b, ']')
	inner.identities(c.Identities)
	inner.str("state", c.State)
	inner.optStr("agent", c.Agent)
	inner.optStr("reader", c.Reader)
	e.b = append(inner.b, '}')
}

// identityOrder is the order pySim's server builds identities in.
var identityOrder = [...]string{IdentityATR, IdentityEID, IdentityICCID}

func (e *encoder) identities(ids Identities) {
	e.key("identities")
	e.b = append(e.b, '{')
	n := 0
	put := func(k, v string) {
		if n > 0 {
			e.b = append(e.b, ", "...)
		}
		n++
		e.b = appendString(e.b, k)
		e.b = append(e.b, ": "...)
		e.b = appendString(e.b, v)
	}
	for _, k := range identityOrder {
		if v, ok := ids[k]; ok {
			put(k, v)
		}
	}
	if len(ids) > n {
		var rest []string
		for k := range ids {
			if k != IdentityATR && k != IdentityEID && k != IdentityICCID {
				rest = append(rest, k)
			}
		}
		sort.Strings(rest)
		for _, k := range rest {
			put(k, ids[k])
		}
	}
	e.b = append(e.b, '}')
}

const hexDigits = "0123456789abcdef"

func appendHex16(b []byte, v uint16) []byte {
	return append(b, hexDigits[v>>12], hexDigits[v>>8&0xf], hexDigits[v>>4&0xf], hexDigits[v&0xf])
}

// appendString appends s as a JSON string the way Python's json.dumps does
// with ensure_ascii: non-ASCII as \uXXXX (surrogate pairs above the BMP).
// Invalid UTF-8 becomes U+FFFD.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"':
				b = append(b, '\\', '"')
			case c == '\\':
				b = append(b, '\\', '\\')
			case c == '\n':
				b = append(b, '\\', 'n')
			case c == '\r':
				b = append(b, '\\', 'r')
			case c == '\t':
				b = append(b, '\\', 't')
			case c == '\b':
				b = append(b, '\\', 'b')
			case c == '\f':
				b = append(b, '\\', 'f')
			case c < 0x20 || c == 0x7f:
				b = appendU(b, rune(c))
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		i += size
		if r >= 0x10000 {
			r -= 0x10000
			b = appendU(b, 0xd800+(r>>10))
			b = appendU(b, 0xdc00+(r&0x3ff))
			continue
		}
		b = appendU(b, r)
	}
	return append(b, '"')
}

func appendU(b []byte, r rune) []byte {
	return append(b, '\\', 'u', hexDigits[r>>12&0xf], hexDigits[r>>8&0xf], hexDigits[r>>4&0xf], hexDigits[r&0xf])
}
