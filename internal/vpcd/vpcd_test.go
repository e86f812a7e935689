package vpcd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/card/sim"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testCard answers every APDU with its reply and records resets.
type testCard struct {
	mu     sync.Mutex
	atr    []byte
	reply  []byte
	resets []card.ResetKind
	cmds   [][]byte
}

func (c *testCard) ATR() []byte { c.mu.Lock(); defer c.mu.Unlock(); return slices.Clone(c.atr) }
func (c *testCard) Process(cmd []byte) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cmds = append(c.cmds, slices.Clone(cmd))
	return slices.Clone(c.reply)
}
func (c *testCard) Reset(ctx context.Context, k card.ResetKind) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.resets = append(c.resets, k)
	return c.atr, nil
}
func (c *testCard) resetLog() []card.ResetKind {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.resets)
}

// fakeVPCD plays vpcd's side over a connection.
type fakeVPCD struct {
	t    *testing.T
	conn net.Conn
}

func (v *fakeVPCD) send(p []byte) {
	v.t.Helper()
	if err := writeMsg(v.conn, p); err != nil {
		v.t.Fatalf("vpcd send: %v", err)
	}
}

func (v *fakeVPCD) recv() []byte {
	v.t.Helper()
	msg, err := readMsg(v.conn, nil)
	if err != nil {
		v.t.Fatalf("vpcd recv: %v", err)
	}
	return msg
}

func (v *fakeVPCD) exchange(p []byte) []byte {
	v.t.Helper()
	v.send(p)
	return v.recv()
}

// pipe serves c over one end of an in-memory connection and returns the
// vpcd end and a channel with ServeConn's result.
func pipe(t *testing.T, ctx context.Context, c Card) (*fakeVPCD, <-chan error) {
	a, b := net.Pipe()
	res := make(chan error, 1)
	done := make(chan struct{})
	go func() { res <- ServeConn(ctx, a, c); close(done) }()
	t.Cleanup(func() { b.Close(); <-done })
	return &fakeVPCD{t: t, conn: b}, res
}

func TestProtocol(t *testing.T) {
	c := &testCard{atr: []byte{0x3b, 0x00}, reply: []byte{0x01, 0x02, 0x90, 0x00}}
	v, _ := pipe(t, context.Background(), c)

	if got := v.exchange([]byte{CtrlATR}); !bytes.Equal(got, c.atr) {
		t.Fatalf("ATR = %x", got)
	}
	v.send([]byte{CtrlPowerOn}) // first power on: no reset
	v.send([]byte{CtrlReset})
	v.send([]byte{CtrlPowerOff})
	v.send([]byte{CtrlPowerOn})
	v.send([]byte{3}) // unknown: ignored, no answer
	cmd := []byte{0x00, 0xb0, 0x00, 0x00, 0x00}
	if got := v.exchange(cmd); !bytes.Equal(got, c.reply) {
		t.Fatalf("response = %x", got)
	}
	if got, want := c.resetLog(), []card.ResetKind{card.WarmReset, card.ColdReset}; !slices.Equal(got, want) {
		t.Fatalf("resets = %v, want %v", got, want)
	}
}

func TestResponseBounds(t *testing.T) {
	for _, tt := range []struct {
		name  string
		reply []byte
		want  []byte
	}{
		{"empty becomes 6F00", nil, []byte{0x6f, 0x00}},
		{"one byte becomes 6F00", []byte{0x90}, []byte{0x6f, 0x00}},
		{"too long becomes 6700", make([]byte, MaxPayload+1), []byte{0x67, 0x00}},
		{"longest passes", make([]byte, MaxPayload), make([]byte, MaxPayload)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			v, _ := pipe(t, context.Background(), &testCard{atr: []byte{0x3b, 0}, reply: tt.reply})
			if got := v.exchange([]byte{0, 0xa4, 0, 0}); !bytes.Equal(got, tt.want) {
				t.Fatalf("got %d bytes %.8x, want %d bytes", len(got), got, len(tt.want))
			}
		})
	}
}

func TestBadMessages(t *testing.T) {
	t.Run("empty payload", func(t *testing.T) {
		v, res := pipe(t, context.Background(), &testCard{atr: []byte{0x3b, 0}})
		v.send(nil)
		if err := <-res; !errors.Is(err, ErrMessage) {
			t.Fatalf("err = %v, want ErrMessage", err)
		}
	})
	t.Run("truncated payload", func(t *testing.T) {
		v, res := pipe(t, context.Background(), &testCard{atr: []byte{0x3b, 0}})
		v.conn.Write([]byte{0x00, 0x05, 0x00, 0xa4})
		v.conn.Close()
		if err := <-res; !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("err = %v, want unexpected EOF", err)
		}
	})
	t.Run("card without ATR", func(t *testing.T) {
		v, res := pipe(t, context.Background(), &testCard{})
		v.send([]byte{CtrlATR})
		if err := <-res; err == nil {
			t.Fatal("no error for an empty ATR")
		}
	})
	t.Run("vpcd closes", func(t *testing.T) {
		v, res := pipe(t, context.Background(), &testCard{atr: []byte{0x3b, 0}})
		v.conn.Close()
		if err := <-res; err != nil {
			t.Fatalf("err = %v, want nil", err)
		}
	})
}

func TestServeConnContextCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	v, res := pipe(t, ctx, &testCard{atr: []byte{0x3b, 0}})
	_ = v
	cancel()
	if err := <-res; err != nil {
		t.Fatalf("err = %v, want nil", err)
	}
}

func TestWithSim(t *testing.T) {
	s := sim.New(sim.Config{Protocol: sim.T1})
	v, _ := pipe(t, context.Background(), s)
	if got := v.exchange([]byte{CtrlATR}); !bytes.Equal(got, sim.ATRT1) {
		t.Fatalf("ATR = %x", got)
	}
	// SELECT MF, then READ BINARY of EF 6F99 with an extended Le of 1000.
	v.exchange([]byte{0x00, 0xa4, 0x00, 0x04, 0x02, 0x3f, 0x00})
	v.exchange([]byte{0x00, 0xa4, 0x00, 0x0c, 0x02, 0x6f, 0x99})
	got := v.exchange([]byte{0x00, 0xb0, 0x00, 0x00, 0x00, 0x03, 0xe8})
	if len(got) != 1002 || got[1000] != 0x90 || got[999] != byte(999%251) {
		t.Fatalf("READ BINARY: %d bytes, SW %x", len(got), got[len(got)-2:])
	}
}

// listen opens a loopback listener standing in for vpcd.
func listen(t *testing.T) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func accept(t *testing.T, ln net.Listener) *fakeVPCD {
	t.Helper()
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &fakeVPCD{t: t, conn: conn}
}

func TestSlotInsertRemove(t *testing.T) {
	ln := listen(t)
	s := NewSlot(ln.Addr().String())
	c := &testCard{atr: []byte{0x3b, 0x01}}
	ctx := context.Background()
	if s.Done() != nil {
		t.Fatal("empty slot has a Done channel")
	}
	for range 2 { // insert, remove, and again
		if err := s.Insert(ctx, c); err != nil {
			t.Fatal(err)
		}
		if err := s.Insert(ctx, c); err == nil {
			t.Fatal("second Insert succeeded")
		}
		v := accept(t, ln)
		if got := v.exchange([]byte{CtrlATR}); !bytes.Equal(got, c.atr) {
			t.Fatalf("ATR = %x", got)
		}
		if err := s.Remove(); err != nil {
			t.Fatal(err)
		}
		if _, err := readMsg(v.conn, nil); !errors.Is(err, io.EOF) {
			t.Fatalf("after Remove vpcd reads %v, want EOF", err)
		}
	}
	if err := s.Remove(); err != nil {
		t.Fatalf("Remove on empty slot: %v", err)
	}
}

func TestSlotVPCDDrops(t *testing.T) {
	ln := listen(t)
	s := NewSlot(ln.Addr().String())
	if err := s.Insert(context.Background(), &testCard{atr: []byte{0x3b, 0}}); err != nil {
		t.Fatal(err)
	}
	done := s.Done()
	v := accept(t, ln)
	v.send(nil) // malformed: the card hangs up
	<-done
	if err := s.Remove(); !errors.Is(err, ErrMessage) {
		t.Fatalf("Remove = %v, want the ErrMessage that ended the connection", err)
	}
	// The slot is empty again.
	if err := s.Insert(context.Background(), &testCard{atr: []byte{0x3b, 0}}); err != nil {
		t.Fatal(err)
	}
	accept(t, ln)
	s.Remove()
}

func TestSlotInsertNoVPCD(t *testing.T) {
	ln := listen(t)
	addr := ln.Addr().String()
	ln.Close()
	if err := NewSlot(addr).Insert(context.Background(), &testCard{}); err == nil {
		t.Fatal("Insert without vpcd succeeded")
	}
}

func TestRunReconnects(t *testing.T) {
	ln := listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	c := &testCard{atr: []byte{0x3b, 0x02}}
	res := make(chan error, 1)
	go func() {
		res <- Run(ctx, ln.Addr().String(), c, RunOptions{MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond})
	}()
	for range 3 { // vpcd restarts twice
		v := accept(t, ln)
		if got := v.exchange([]byte{CtrlATR}); !bytes.Equal(got, c.atr) {
			t.Fatalf("ATR = %x", got)
		}
		v.conn.Close()
	}
	v := accept(t, ln)
	cancel()
	if err := <-res; err != nil {
		t.Fatalf("Run = %v", err)
	}
	if _, err := readMsg(v.conn, nil); !errors.Is(err, io.EOF) {
		t.Fatalf("after cancel vpcd reads %v, want EOF", err)
	}
}

func TestRunNoVPCDThenCancel(t *testing.T) {
	ln := listen(t)
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan error, 1)
	go func() { res <- Run(ctx, addr, &testCard{}, RunOptions{MinBackoff: time.Hour}) }()
	cancel()
	if err := <-res; err != nil {
		t.Fatalf("Run = %v", err)
	}
}

func FuzzMessages(f *testing.F) {
	frame := func(p ...byte) []byte {
		return binary.BigEndian.AppendUint16(nil, uint16(len(p)))
	}
	f.Add(append(frame(4), 4))
	f.Add(append(append(frame(0), 0), append(frame(1), 1)...))
	f.Add(append(frame(0, 0xa4, 0, 0), 0, 0xa4, 0, 0))
	f.Add([]byte{0x00, 0x00})
	f.Add([]byte{0xff, 0xff, 0x00})
	f.Fuzz(func(t *testing.T, data []byte) {
		s := &session{l: cardLink{sim.New(sim.Config{})}}
		r := bytes.NewReader(data)
		for {
			msg, err := readMsg(r, nil)
			if err != nil {
				return
			}
			reply, err := s.handle(context.Background(), msg)
			if err != nil {
				return
			}
			if len(msg) > 1 && (len(reply) < 2 || len(reply) > MaxPayload) {
				t.Fatalf("APDU %x got reply of %d bytes", msg, len(reply))
			}
		}
	})
}

// failingLink is a Link whose exchanges fail once broken is set.
type failingLink struct {
	testCard
	broken error // guarded by testCard.mu
}

func (l *failingLink) err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.broken
}

func (l *failingLink) Transmit(_ context.Context, cmd []byte) ([]byte, error) {
	if err := l.err(); err != nil {
		return nil, err
	}
	return l.Process(cmd), nil
}

func (l *failingLink) Reset(ctx context.Context, k card.ResetKind) ([]byte, error) {
	if err := l.err(); err != nil {
		return nil, err
	}
	return l.testCard.Reset(ctx, k)
}

// TestServeLink: with ResetAtPowerOn the first power on is a cold reset;
// an exchange that fails ends the connection with the link's error (the
// card leaves the reader), without an answer to vpcd.
func TestServeLink(t *testing.T) {
	for _, tc := range []struct {
		name string
		last []byte // the request that meets the broken link
	}{
		{"APDU", []byte{0x00, 0xa4, 0x00, 0x00}},
		{"reset", []byte{CtrlReset}},
		{"power on", []byte{CtrlPowerOn}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := &failingLink{testCard: testCard{atr: []byte{0x3b, 0x00}, reply: []byte{0x90, 0x00}}}
			a, b := net.Pipe()
			res := make(chan error, 1)
			go func() { res <- ServeLink(context.Background(), a, l, LinkOptions{ResetAtPowerOn: true}) }()
			defer b.Close()
			v := &fakeVPCD{t: t, conn: b}
			v.send([]byte{CtrlPowerOn})
			if got := v.exchange([]byte{CtrlATR}); !bytes.Equal(got, l.atr) {
				t.Fatalf("ATR = %x", got)
			}
			if got := v.exchange([]byte{0x00, 0xb0, 0x00, 0x00, 0x01}); !bytes.Equal(got, l.reply) {
				t.Fatalf("response = %x", got)
			}
			if got, want := l.resetLog(), []card.ResetKind{card.ColdReset}; !slices.Equal(got, want) {
				t.Fatalf("resets = %v, want %v", got, want)
			}
			if tc.last[0] == CtrlPowerOn {
				v.send([]byte{CtrlPowerOff})
			}
			l.mu.Lock()
			l.broken = errors.New("remote card gone")
			l.mu.Unlock()
			v.send(tc.last)
			if _, err := readMsg(b, nil); !errors.Is(err, io.EOF) {
				t.Fatalf("vpcd got %v, want the connection closed", err)
			}
			if err := <-res; err == nil || !strings.Contains(err.Error(), "remote card gone") {
				t.Fatalf("ServeLink = %v, want the link's error", err)
			}
		})
	}
}

// offLink records power offs; the second one fails.
type offLink struct {
	failingLink
	offs int // guarded by testCard.mu
}

func (l *offLink) PowerOff(context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.offs++
	if l.offs > 1 {
		return errors.New("cannot release")
	}
	return nil
}

// TestServeLinkPowerOff: a PowerOffer hears vpcd's power off; its error
// ends the connection.
func TestServeLinkPowerOff(t *testing.T) {
	l := &offLink{failingLink: failingLink{testCard: testCard{atr: []byte{0x3b, 0x00}, reply: []byte{0x90, 0x00}}}}
	a, b := net.Pipe()
	res := make(chan error, 1)
	go func() { res <- ServeLink(context.Background(), a, l, LinkOptions{}) }()
	defer b.Close()
	v := &fakeVPCD{t: t, conn: b}
	v.send([]byte{CtrlPowerOn})
	v.send([]byte{CtrlPowerOff})
	if got := v.exchange([]byte{CtrlATR}); !bytes.Equal(got, l.atr) {
		t.Fatalf("ATR = %x", got)
	}
	v.send([]byte{CtrlPowerOff})
	if _, err := readMsg(b, nil); !errors.Is(err, io.EOF) {
		t.Fatalf("vpcd got %v, want the connection closed", err)
	}
	if err := <-res; err == nil || !strings.Contains(err.Error(), "cannot release") {
		t.Fatalf("ServeLink = %v", err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.offs != 2 {
		t.Fatalf("%d power offs heard, want 2", l.offs)
	}
}

// TestServeLinkSilent: a vpcd that accepts the connection but sends
// nothing (another card has the slot) is reported with ErrSilent; once
// vpcd has spoken, silence is normal. (synctest: the waits are on a fake
// clock.)
func TestServeLinkSilent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := &failingLink{testCard: testCard{atr: []byte{0x3b, 0x00}}}
		a, b := net.Pipe()
		defer b.Close()
		if err := ServeLink(context.Background(), a, l, LinkOptions{FirstMessageTimeout: 5 * time.Second}); !errors.Is(err, ErrSilent) {
			t.Fatalf("ServeLink = %v, want ErrSilent", err)
		}

		a, b = net.Pipe()
		defer b.Close()
		ctx, cancel := context.WithCancel(context.Background())
		res := make(chan error, 1)
		go func() { res <- ServeLink(ctx, a, l, LinkOptions{FirstMessageTimeout: 5 * time.Second}) }()
		v := &fakeVPCD{t: t, conn: b}
		v.exchange([]byte{CtrlATR})
		time.Sleep(time.Minute) // fake time: silent far beyond the bound
		v.exchange([]byte{CtrlATR})
		cancel()
		if err := <-res; err != nil {
			t.Fatalf("ServeLink = %v", err)
		}
	})
}
