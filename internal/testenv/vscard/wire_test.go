package vscard

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

func msgBytes(t testing.TB, m Message) []byte {
	t.Helper()
	b, err := m.Append(nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var parseTests = []struct {
	name    string
	in      []byte
	want    Message
	used    int
	wantErr error
}{
	{"empty", nil, Message{}, 0, io.EOF},
	{"short header", []byte{0, 0, 0, 7, 0, 0}, Message{}, 0, io.ErrUnexpectedEOF},
	{"short payload", []byte{0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 3, 0x90}, Message{}, 0, io.ErrUnexpectedEOF},
	{"too large", []byte{0, 0, 0, 7, 0, 0, 0, 0, 0, 1, 0, 0}, Message{}, 0, ErrTooLarge},
	{"huge", []byte{0, 0, 0, 7, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF}, Message{}, 0, ErrTooLarge},
	{"apdu", []byte{0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 2, 0x90, 0x00},
		Message{Type: MsgAPDU, Payload: []byte{0x90, 0x00}}, 14, nil},
	{"trailing bytes", []byte{0, 0, 0, 6, 0, 0, 0, 1, 0, 0, 0, 0, 0xAA},
		Message{Type: MsgCardRemove, ReaderID: 1, Payload: []byte{}}, 12, nil},
	{"unknown type", []byte{0, 0, 0, 99, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0},
		Message{Type: 99, ReaderID: ReaderIDUndefined, Payload: []byte{}}, 12, nil},
}

func TestParse(t *testing.T) {
	for _, tt := range parseTests {
		t.Run(tt.name, func(t *testing.T) {
			m, n, err := Parse(tt.in)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if n != tt.used || m.Type != tt.want.Type || m.ReaderID != tt.want.ReaderID || !bytes.Equal(m.Payload, tt.want.Payload) {
				t.Fatalf("got %v %X (%d bytes), want %v %X (%d)", m, m.Payload, n, tt.want, tt.want.Payload, tt.used)
			}
		})
	}
}

func TestReadMessage(t *testing.T) {
	for _, tt := range parseTests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := ReadMessage(bytes.NewReader(tt.in))
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if err == nil && (m.Type != tt.want.Type || !bytes.Equal(m.Payload, tt.want.Payload)) {
				t.Fatalf("got %v, want %v", m, tt.want)
			}
		})
	}
}

func TestAppendRoundTrip(t *testing.T) {
	m := Message{Type: MsgATR, ReaderID: 0, Payload: []byte{0x3B, 0x9F, 0x96}}
	b := msgBytes(t, m)
	want := []byte{0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 3, 0x3B, 0x9F, 0x96}
	if !bytes.Equal(b, want) {
		t.Fatalf("encoded % X, want % X", b, want)
	}
	got, n, err := Parse(b)
	if err != nil || n != len(b) || got.Type != m.Type || !bytes.Equal(got.Payload, m.Payload) {
		t.Fatalf("round trip: %v %d %v", got, n, err)
	}
	if _, err := (Message{Type: MsgAPDU, Payload: make([]byte, MaxPayloadLen+1)}).Append(nil); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized payload: err = %v, want ErrTooLarge", err)
	}
	if _, err := (Message{Type: MsgAPDU, Payload: make([]byte, MaxPayloadLen)}).Append(nil); err != nil {
		t.Fatalf("largest payload: %v", err)
	}
}

var initTests = []struct {
	name string
	in   []byte
	want Init
	ok   bool
}{
	{"qemu", []byte{'V', 'S', 'C', 'D', 0, 0, 0, 2, 0, 0, 0, 0}, Init{Version: 2, Capabilities: []uint32{0}}, true},
	{"no caps", []byte{'V', 'S', 'C', 'D', 0, 0, 0, 2}, Init{Version: 2}, true},
	{"bad magic", []byte{'D', 'C', 'S', 'V', 0, 0, 0, 2, 0, 0, 0, 0}, Init{}, false},
	{"short", []byte{'V', 'S', 'C', 'D', 0, 0}, Init{}, false},
	{"ragged caps", []byte{'V', 'S', 'C', 'D', 0, 0, 0, 2, 0, 0}, Init{}, false},
	{"empty", nil, Init{}, false},
}

func TestParseInit(t *testing.T) {
	for _, tt := range initTests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseInit(tt.in)
			if (err == nil) != tt.ok {
				t.Fatalf("err = %v, want ok=%v", err, tt.ok)
			}
			if err != nil {
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("err = %v, want ErrMalformed", err)
				}
				return
			}
			if got.Version != tt.want.Version || len(got.Capabilities) != len(tt.want.Capabilities) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
			if !bytes.Equal(got.Marshal(), tt.in) {
				t.Fatalf("Marshal = % X, want % X", got.Marshal(), tt.in)
			}
		})
	}
}

func TestParseError(t *testing.T) {
	if c, err := ParseError(ErrorPayload(CodeCardAlreadyInserted)); err != nil || c != CodeCardAlreadyInserted {
		t.Fatalf("ParseError = %v, %v", c, err)
	}
	for _, p := range [][]byte{nil, {0, 0, 0}, {0, 0, 0, 0, 0}} {
		if _, err := ParseError(p); !errors.Is(err, ErrMalformed) {
			t.Fatalf("ParseError(% X) err = %v, want ErrMalformed", p, err)
		}
	}
}

func TestStrings(t *testing.T) {
	for _, tt := range []struct{ got, want string }{
		{MsgAPDU.String(), "APDU"},
		{MsgType(0).String(), "MsgType(0)"},
		{MsgType(42).String(), "MsgType(42)"},
		{CodeCardAlreadyInserted.String(), "card already inserted"},
		{ErrorCode(9).String(), "error code 9"},
		{(&RefusedError{Request: MsgATR, Code: CodeGeneral}).Error(), "vscard: ATR refused: general error"},
	} {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}

// FuzzParse checks that Parse never panics, agrees with ReadMessage and
// round-trips through Append.
func FuzzParse(f *testing.F) {
	for _, tt := range parseTests {
		f.Add(tt.in)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, n, err := Parse(b)
		rm, rerr := ReadMessage(bytes.NewReader(b))
		if (err == nil) != (rerr == nil) {
			t.Fatalf("Parse err %v, ReadMessage err %v", err, rerr)
		}
		if err != nil {
			return
		}
		if rm.Type != m.Type || rm.ReaderID != m.ReaderID || !bytes.Equal(rm.Payload, m.Payload) {
			t.Fatalf("Parse %v, ReadMessage %v", m, rm)
		}
		enc, err := m.Append(nil)
		if err != nil || !bytes.Equal(enc, b[:n]) {
			t.Fatalf("re-encoded % X (%v), want % X", enc, err, b[:n])
		}
	})
}

// FuzzParseInit checks that ParseInit never panics and round-trips.
func FuzzParseInit(f *testing.F) {
	for _, tt := range initTests {
		f.Add(tt.in)
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		in, err := ParseInit(p)
		if err != nil {
			return
		}
		if !bytes.Equal(in.Marshal(), p) {
			t.Fatalf("Marshal = % X, want % X", in.Marshal(), p)
		}
	})
}
