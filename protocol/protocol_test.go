package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// Frames copied from ../shared/protocol/transcript.md, as pySim's server sent them.
var pysimFrames = []string{
	`{"msg_type": "hello_ack"}`,
	`{"command": "00a4040410a0000005591010ffffffff8900000100", "msg_type": "c_apdu"}`,
	`{"response": "bf3e125a1089049032123451234512345678901235", "sw": "9000", "msg_type": "r_apdu"}`,
	`{"response": "", "sw": "6a82", "msg_type": "r_apdu"}`,
	`{"new_state": "ready", "msg_type": "state_notification"}`,
	`{"cards": [{"remote_addr": ["127.0.0.1", 37586], "identities": {"ATR": "3b9f96801fc78031e073fe211b575352435653494da3", "EID": "89049032123451234512345678901235", "ICCID": "8949440000001155314"}, "state": "ready"}], "msg_type": "list_cards_ack"}`,
	`{"identities": {"ATR": "3b9f96801fc78031e073fe211b575352435653494da3", "EID": "89049032123451234512345678901235", "ICCID": "8949440000001155314"}, "msg_type": "select_card_ack"}`,
	`{"msg_type": "reset_req"}`,
	`{"msg_type": "reset_resp"}`,
	`{"atr": "3b9f96801fc78031e073fe211b575352435653494da3", "msg_type": "reset_resp"}`,
	`{"message": "No CardClient found for iccid == 1234", "msg_type": "error"}`,
	`{"cards": [], "msg_type": "list_cards_ack"}`,
	`{"atr": "3b9f96801fc78031e073fe211b575352435653494da3", "client_type": "card", "msg_type": "hello"}`,
	`{"client_type": "user", "msg_type": "hello"}`,
	`{"id_type": "eid", "id_str": "89049032123451234512345678901235", "msg_type": "select_card"}`,
}

// TestRoundTripBytes checks that decoding a pySim frame and encoding it again
// gives the very same bytes.
func TestRoundTripBytes(t *testing.T) {
	for _, f := range pysimFrames {
		m, err := Decode([]byte(f))
		if err != nil {
			t.Fatalf("Decode(%s): %v", f, err)
		}
		if got := string(Encode(m)); got != f {
			t.Errorf("re-encoded\n got %s\nwant %s", got, f)
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	cases := []struct{ in, want string }{
		{`this is not json`, "not a JSON object"},
		{`{"msg_type": "c_apdu", "command": "00a4"`, "malformed JSON"},
		{`{"command": "00a4"}`, `missing field "msg_type"`},
		{`{"msg_type": 5}`, `"msg_type" must be a string`},
		{`{"msg_type": "c_apdu"}`, `invalid c_apdu message: missing field "command"`},
		{`{"msg_type": "c_apdu", "command": 12}`, `field "command" must be a string`},
		{`{"msg_type": "c_apdu", "command": "00a400"}`, `at least 4 bytes`},
		{`{"msg_type": "c_apdu", "command": "00a4000"}`, `odd number of hex digits (7)`},
		{`{"msg_type": "c_apdu", "command": "00a4zz00"}`, `invalid hex digit 'z' at position 4`},
		{`{"msg_type": "r_apdu", "response": "", "sw": "900"}`, `odd number`},
		{`{"msg_type": "r_apdu", "response": "", "sw": "900000"}`, `must be 4 hex digits`},
		{`{"msg_type": "r_apdu", "sw": "9000"}`, `missing field "response"`},
		{`{"msg_type": "hello", "client_type": "card"}`, `missing field "atr"`},
		{`{"msg_type": "hello"}`, `missing field "client_type"`},
		{`{"msg_type": "select_card", "id_type": "eid"}`, `missing field "id_str"`},
		{`{"msg_type": "bogus"}`, `unknown msg_type "bogus"`},
	}
	for _, c := range cases {
		_, err := Decode([]byte(c.in))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Decode(%s) = %v, want error containing %q", c.in, err, c.want)
		}
	}
	_, err := Decode([]byte(`{"msg_type": "bogus"}`))
	if !errors.Is(err, ErrUnknownType) {
		t.Errorf("unknown type error %v does not wrap ErrUnknownType", err)
	}
}

func TestLenient(t *testing.T) {
	// Unknown fields, upper-case hex, and a wrongly typed field that the
	// message does not use are all accepted.
	m, err := Decode([]byte(`{"msg_type": "c_apdu", "command": "00A4040410A0", "future": [1,2], "sw": 7}`))
	if err != nil {
		t.Fatal(err)
	}
	if c := m.(CAPDU); !bytes.Equal(c.Command, []byte{0, 0xa4, 4, 4, 0x10, 0xa0}) {
		t.Errorf("command = %x", c.Command)
	}
}

func TestEncodeEscapes(t *testing.T) {
	got := string(Encode(Error{Message: "a\"b\\c\n\x01ü😀\x7f"}))
	want := `{"message": "a\"b\\c\n\u0001\u00fc\ud83d\ude00\u007f", "msg_type": "error"}`
	if got != want {
		t.Errorf("got %s\nwant %s", got, want)
	}
}

func FuzzDecode(f *testing.F) {
	for _, s := range pysimFrames {
		f.Add([]byte(s))
	}
	f.Add([]byte(`{"msg_type": "c_apdu", "command": "00a4zz00"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Decode(data)
		if err != nil {
			return
		}
		// Whatever decodes must encode and decode again to the same frame.
		enc := Encode(m)
		m2, err := Decode(enc)
		if err != nil {
			t.Fatalf("re-decode of %s: %v", enc, err)
		}
		if enc2 := Encode(m2); !bytes.Equal(enc, enc2) {
			t.Fatalf("unstable encoding: %s vs %s", enc, enc2)
		}
	})
}

// FuzzFastPath checks that the flat-object fast path and encoding/json agree
// on every input the fast path accepts.
func FuzzFastPath(f *testing.F) {
	for _, s := range pysimFrames {
		f.Add([]byte(s))
	}
	f.Add([]byte(`{"msg_type":"c_apdu","command":"00a4","command":"00b0"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var fast wire
		if !scanFlat(data, &fast) {
			return
		}
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(data, &fields); err != nil {
			t.Fatalf("fast path accepted what encoding/json rejects: %q: %v", data, err)
		}
		var slow wire
		for k, v := range fields {
			if f := slow.field([]byte(k)); f != nil {
				*f = v
			}
		}
		if !reflect.DeepEqual(normalize(fast), normalize(slow)) {
			t.Fatalf("fast %+v != slow %+v", fast, slow)
		}
	})
}

// normalize turns RawMessage fields into their decoded strings.
func normalize(w wire) map[string]string {
	out := map[string]string{}
	v := reflect.ValueOf(w)
	for i := 0; i < v.NumField(); i++ {
		raw := v.Field(i).Interface().(json.RawMessage)
		if raw == nil {
			continue
		}
		var s string
		_ = json.Unmarshal(raw, &s)
		out[v.Type().Field(i).Name] = s
	}
	return out
}

func BenchmarkDecodeCAPDU(b *testing.B) {
	frame := []byte(`{"command": "00a4040410a0000005591010ffffffff8900000100", "msg_type": "c_apdu"}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(frame); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncodeRAPDU(b *testing.B) {
	m := RAPDU{Response: bytes.Repeat([]byte{0x62}, 34), SW: 0x9000}
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendEncode(buf[:0], m)
	}
}

// The list_cards filter and list_cards_ack's total are extensions: absent
// from pySim's frames (which decode as before), present only when set.
func TestListCardsFilter(t *testing.T) {
	q := ListCards{Agent: "pi-3", Reader: "OMNIKEY 00 00", IDType: "iccid", IDStr: "8949", Limit: 100}
	got := string(Encode(q))
	want := `{"agent": "pi-3", "reader": "OMNIKEY 00 00", "id_type": "iccid", "id_str": "8949", "limit": 100, "msg_type": "list_cards"}`
	if got != want {
		t.Fatalf("encoded %s\nwant    %s", got, want)
	}
	m, err := Decode([]byte(got))
	if err != nil || m != q {
		t.Fatalf("decoded %+v, %v", m, err)
	}
	if got := string(Encode(ListCards{})); got != `{"msg_type": "list_cards"}` {
		t.Fatalf("plain list_cards: %s", got)
	}
	ack := ListCardsAck{Cards: []CardInfo{}, Total: 5001}
	if got := string(Encode(ack)); got != `{"cards": [], "total": 5001, "msg_type": "list_cards_ack"}` {
		t.Fatalf("ack: %s", got)
	}
	if m, err := Decode(Encode(ack)); err != nil || m.(ListCardsAck).Total != 5001 {
		t.Fatalf("ack decoded %+v, %v", m, err)
	}
	for frame, want := range map[string]string{
		`{"msg_type": "list_cards", "limit": -1}`:      `"limit" must be a whole number`,
		`{"msg_type": "list_cards", "limit": "10"}`:    `"limit" must be a whole number`,
		`{"msg_type": "list_cards", "id_type": "eid"}`: `"id_type" and "id_str" go together`,
	} {
		if _, err := Decode([]byte(frame)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", frame, err, want)
		}
	}
}

// RAPDUOf and Bytes are each other's inverse.
func TestRAPDUBytes(t *testing.T) {
	r, ok := RAPDUOf([]byte{0x62, 0x20, 0x90, 0x00})
	if !ok || r.SW != 0x9000 || string(r.Response) != "\x62\x20" {
		t.Fatalf("RAPDUOf = %+v, %v", r, ok)
	}
	if got := r.Bytes(); string(got) != "\x62\x20\x90\x00" {
		t.Fatalf("Bytes = % x", got)
	}
	if r, ok := RAPDUOf([]byte{0x6a, 0x82}); !ok || len(r.Response) != 0 || r.SW != 0x6a82 {
		t.Fatalf("status word only: %+v %v", r, ok)
	}
	if _, ok := RAPDUOf([]byte{0x90}); ok {
		t.Fatal("one byte accepted")
	}
	// Bytes does not write into the RAPDU's memory.
	resp := []byte{1, 2, 0x90, 0x00}
	r, _ = RAPDUOf(resp)
	_ = append(r.Response, 0xff)
	if resp[2] != 0x90 {
		t.Fatal("appending to Response overwrote the status word")
	}
}
