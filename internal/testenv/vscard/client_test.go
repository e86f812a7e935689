package vscard

import (
	"bytes"
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// guard bounds every wait in these tests: hitting it means a deadlock.
const guard = 10 * time.Second

// echoCard answers every command with the command itself and 90 00.
type echoCard struct{ atr []byte }

func (c echoCard) ATR() []byte               { return c.atr }
func (c echoCard) Process(cmd []byte) []byte { return append(append([]byte(nil), cmd...), 0x90, 0x00) }
func testCard() echoCard                     { return echoCard{atr: []byte{0x3B, 0x02, 0x14, 0x50}} }

// fakeHost plays QEMU's side over an in-memory pipe.
type fakeHost struct {
	t    *testing.T
	conn net.Conn
	got  chan Message  // messages the client sent, in order
	quit chan struct{} // closed at cleanup; stops the reader
}

// start runs a Client against a fakeHost; cleanup closes both and waits
// for Run, whose result it returns through the channel.
func start(t *testing.T) (*Client, *fakeHost, <-chan error) {
	t.Helper()
	a, b := net.Pipe()
	h := &fakeHost{t: t, conn: b, got: make(chan Message), quit: make(chan struct{})}
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for {
			m, err := ReadMessage(b)
			if err != nil {
				return
			}
			select {
			case h.got <- m:
			case <-h.quit:
				return
			}
		}
	}()
	c := NewClient(a, Options{ReaderName: "test reader"})
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan error, 1)
	go func() { res <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		close(h.quit)
		b.Close()
		<-c.Done()
		<-readerDone
	})
	return c, h, res
}

func (h *fakeHost) sendRaw(b []byte) {
	h.t.Helper()
	h.conn.SetWriteDeadline(time.Now().Add(guard))
	if _, err := h.conn.Write(b); err != nil {
		h.t.Fatalf("host write: %v", err)
	}
}

func (h *fakeHost) send(t MsgType, id uint32, p []byte) {
	h.t.Helper()
	h.sendRaw(msgBytes(h.t, Message{t, id, p}))
}

func (h *fakeHost) expect(want MsgType) Message {
	h.t.Helper()
	select {
	case m := <-h.got:
		if m.Type != want {
			h.t.Fatalf("client sent %v, want %v", m, want)
		}
		return m
	case <-time.After(guard):
		h.t.Fatalf("client sent nothing, want %v", want)
	}
	return Message{}
}

func (h *fakeHost) handshake(c *Client) {
	h.t.Helper()
	in := h.expect(MsgInit)
	if got, err := ParseInit(in.Payload); err != nil || got.Version != Version {
		h.t.Fatalf("client Init %+v, %v", got, err)
	}
	h.send(MsgInit, ReaderIDUndefined, Init{Version: Version, Capabilities: []uint32{0}}.Marshal())
	add := h.expect(MsgReaderAdd)
	if add.ReaderID != ReaderIDUndefined || string(add.Payload) != "test reader" {
		h.t.Fatalf("ReaderAdd = %v %q", add, add.Payload)
	}
	h.send(MsgError, 0, ErrorPayload(CodeSuccess))
	select {
	case <-c.Ready():
	case <-time.After(guard):
		h.t.Fatal("client not ready after ReaderAdd acknowledgement")
	}
}

func wait(t *testing.T, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(guard):
		t.Fatal("timed out")
	}
	return nil
}

func async(f func() error) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- f() }()
	return ch
}

func TestInsertAPDURemove(t *testing.T) {
	c, h, _ := start(t)
	// QEMU's unprompted Init may come before its reply; both are fine.
	h.expect(MsgInit)
	h.send(MsgInit, ReaderIDUndefined, Init{Version: Version}.Marshal())
	h.send(MsgInit, ReaderIDUndefined, Init{Version: Version}.Marshal())
	h.expect(MsgReaderAdd)
	h.send(MsgError, 0, ErrorPayload(CodeSuccess))
	ctx := context.Background()

	ins := async(func() error { return c.Insert(ctx, testCard()) })
	atr := h.expect(MsgATR)
	if atr.ReaderID != 0 || !bytes.Equal(atr.Payload, testCard().atr) {
		t.Fatalf("ATR message %v % X", atr, atr.Payload)
	}
	h.send(MsgError, 0, ErrorPayload(CodeSuccess))
	if err := wait(t, ins); err != nil {
		t.Fatalf("Insert: %v", err)
	}

	h.send(MsgAPDU, 0, []byte{0x00, 0xA4, 0x00, 0x0C})
	resp := h.expect(MsgAPDU)
	if want := []byte{0x00, 0xA4, 0x00, 0x0C, 0x90, 0x00}; !bytes.Equal(resp.Payload, want) {
		t.Fatalf("APDU response % X, want % X", resp.Payload, want)
	}

	h.send(MsgFlush, 0, nil)
	h.expect(MsgFlushComplete)

	rm := async(func() error { return c.Remove(ctx) })
	h.expect(MsgCardRemove)
	h.send(MsgError, 0, ErrorPayload(CodeSuccess))
	if err := wait(t, rm); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	// QEMU does not send APDUs without a card; if it did, it gets Error.
	h.send(MsgAPDU, 0, []byte{0x00, 0xB0, 0x00, 0x00})
	e := h.expect(MsgError)
	if code, err := ParseError(e.Payload); err != nil || code != CodeGeneral {
		t.Fatalf("APDU without card answered %v %v", code, err)
	}

	// Re-insertion works the same way.
	ins = async(func() error { return c.Insert(ctx, testCard()) })
	h.expect(MsgATR)
	h.send(MsgError, 0, ErrorPayload(CodeSuccess))
	if err := wait(t, ins); err != nil {
		t.Fatalf("re-Insert: %v", err)
	}
}

// muteCard answers nothing; bigCard answers more than VSCard can carry.
type (
	muteCard struct{ echoCard }
	bigCard  struct{ echoCard }
)

func (muteCard) Process([]byte) []byte { return nil }
func (bigCard) Process([]byte) []byte  { return make([]byte, MaxPayloadLen+1) }

func TestCardWithoutAnswer(t *testing.T) {
	for _, card := range []Card{muteCard{testCard()}, bigCard{testCard()}} {
		c, h, _ := start(t)
		h.handshake(c)
		ins := async(func() error { return c.Insert(context.Background(), card) })
		h.expect(MsgATR)
		h.send(MsgError, 0, ErrorPayload(CodeSuccess))
		if err := wait(t, ins); err != nil {
			t.Fatal(err)
		}
		h.send(MsgAPDU, 0, []byte{0x00, 0xB0, 0x00, 0x00})
		e := h.expect(MsgError)
		if code, err := ParseError(e.Payload); err != nil || code != CodeGeneral {
			t.Fatalf("%T: answered %v %v, want a general Error", card, code, err)
		}
	}
}

func TestInsertRefused(t *testing.T) {
	c, h, _ := start(t)
	h.handshake(c)
	ins := async(func() error { return c.Insert(context.Background(), testCard()) })
	h.expect(MsgATR)
	h.send(MsgError, 0, ErrorPayload(CodeCardAlreadyInserted))
	err := wait(t, ins)
	var re *RefusedError
	if !errors.As(err, &re) || re.Code != CodeCardAlreadyInserted || re.Request != MsgATR {
		t.Fatalf("Insert err = %v, want RefusedError(card already inserted)", err)
	}
	// An Error nobody waits for is logged and ignored.
	h.send(MsgError, 0, ErrorPayload(CodeGeneral))
	h.send(MsgFlush, 0, nil)
	h.expect(MsgFlushComplete)
}

func TestBadATR(t *testing.T) {
	c, _, _ := start(t)
	for _, atr := range [][]byte{nil, make([]byte, MaxATRLen+1)} {
		if err := c.Insert(context.Background(), echoCard{atr: atr}); !errors.Is(err, ErrBadATR) {
			t.Fatalf("Insert(%d-byte ATR) err = %v, want ErrBadATR", len(atr), err)
		}
	}
}

func TestReaderAddRefused(t *testing.T) {
	c, h, res := start(t)
	h.expect(MsgInit)
	h.send(MsgInit, ReaderIDUndefined, Init{Version: Version}.Marshal())
	h.expect(MsgReaderAdd)
	h.send(MsgError, ReaderIDUndefined, ErrorPayload(CodeCannotAddMoreReaders))
	err := wait(t, res)
	var re *RefusedError
	if !errors.As(err, &re) || re.Code != CodeCannotAddMoreReaders {
		t.Fatalf("Run err = %v, want RefusedError(cannot add more readers)", err)
	}
	if err := c.Insert(context.Background(), testCard()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Insert after Run ended: %v, want ErrClosed", err)
	}
}

func TestBadInput(t *testing.T) {
	for _, tt := range []struct {
		name string
		host func(h *fakeHost)
		want error
	}{
		{"bad magic", func(h *fakeHost) {
			h.send(MsgInit, ReaderIDUndefined, []byte("XXXX\x00\x00\x00\x02"))
		}, ErrMalformed},
		{"apdu before init", func(h *fakeHost) { h.send(MsgAPDU, 0, []byte{0}) }, ErrMalformed},
		{"init refused", func(h *fakeHost) { h.send(MsgError, 0, ErrorPayload(CodeGeneral)) }, nil},
		{"short error", func(h *fakeHost) {
			h.send(MsgInit, ReaderIDUndefined, Init{Version: Version}.Marshal())
			h.expect(MsgReaderAdd)
			h.send(MsgError, 0, []byte{0})
		}, ErrMalformed},
		{"oversized", func(h *fakeHost) {
			h.sendRaw([]byte{0, 0, 0, 7, 0, 0, 0, 0, 0x10, 0, 0, 0})
		}, ErrTooLarge},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, h, res := start(t)
			h.expect(MsgInit)
			tt.host(h)
			err := wait(t, res)
			if tt.want == nil {
				var re *RefusedError
				if !errors.As(err, &re) {
					t.Fatalf("Run err = %v, want RefusedError", err)
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("Run err = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestPeerClosesWithPendingRequest(t *testing.T) {
	c, h, res := start(t)
	h.handshake(c)
	ins := async(func() error { return c.Insert(context.Background(), testCard()) })
	h.expect(MsgATR)
	h.conn.Close()
	if err := wait(t, ins); !errors.Is(err, ErrClosed) {
		t.Fatalf("Insert err = %v, want ErrClosed", err)
	}
	if err := wait(t, res); err != nil {
		t.Fatalf("Run after clean close: %v", err)
	}
}

func TestContextEndsRun(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	c := NewClient(a, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	res := async(func() error { return c.Run(ctx) })
	m, err := ReadMessage(b)
	if err != nil || m.Type != MsgInit {
		t.Fatalf("first message %v, %v", m, err)
	}
	// A request waiting for Ready gives up with its own context.
	ictx, icancel := context.WithCancel(context.Background())
	icancel()
	if err := c.Insert(ictx, testCard()); !errors.Is(err, context.Canceled) {
		t.Fatalf("Insert with cancelled ctx: %v", err)
	}
	cancel()
	if err := wait(t, res); err != nil {
		t.Fatalf("Run after cancel: %v", err)
	}
}
