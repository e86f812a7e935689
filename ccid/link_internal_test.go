package ccid

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/ccid/internal/usbio"
)

// fakeConn is a scripted claimed interface: every bulk-out message goes
// to out, bulk-in transfers come from in.
type fakeConn struct {
	out    chan []byte
	in     chan []byte
	gone   chan struct{}
	closed chan struct{}
	ctrl   chan [3]uint16 // req, value, index of control requests
}

func newFakeConn() *fakeConn {
	return &fakeConn{out: make(chan []byte, 16), in: make(chan []byte, 64), gone: make(chan struct{}),
		closed: make(chan struct{}), ctrl: make(chan [3]uint16, 16)}
}

func (f *fakeConn) BulkOut(ctx context.Context, msg []byte, timeout time.Duration) error {
	f.out <- append([]byte(nil), msg...)
	return nil
}

func (f *fakeConn) BulkIn(ctx context.Context, buf []byte, timeout time.Duration) (int, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case b := <-f.in:
		return copy(buf, b), nil
	case <-t.C:
		return 0, usbio.ErrTimeout
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-f.gone:
		return 0, usbio.ErrNoDevice
	}
}

func (f *fakeConn) InterruptIn(ctx context.Context, buf []byte) (int, error) {
	<-ctx.Done()
	return 0, ctx.Err()
}

func (f *fakeConn) Control(ctx context.Context, reqType, req uint8, value, index uint16, data []byte) (int, error) {
	f.ctrl <- [3]uint16{uint16(req), value, index}
	return 0, usbio.ErrStall
}

func (f *fakeConn) Close() error {
	close(f.closed)
	return nil
}

func testLink(t *testing.T, slots int) (*link, *fakeConn) {
	f := newFakeConn()
	d := Descriptor{MaxSlotIndex: uint8(slots - 1), MaxMessageLength: 271, MaxBusySlots: uint8(slots)}
	l := newLink("Test Reader", ccidInterface{Number: 2, Desc: d}, f, slog.New(slog.DiscardHandler))
	t.Cleanup(func() { l.close() })
	return l, f
}

// reply answers the next bulk-out message with frames built by mk from it.
func (f *fakeConn) reply(t *testing.T, mk func(cmd Message) [][]byte) Message {
	t.Helper()
	cmd, err := ParseMessage(<-f.out)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range mk(cmd) {
		f.in <- b
	}
	return cmd
}

func frameFor(cmd Message, typ MessageType, param [3]byte, data []byte) []byte {
	return AppendMessage(nil, Message{Type: typ, Slot: cmd.Slot, Seq: cmd.Seq, Param: param, Data: data})
}

func TestLinkRouting(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, f := testLink(t, 2)
		ctx := context.Background()
		type res struct {
			m   Message
			err error
		}
		results := make(chan res, 1)
		go func() {
			m, err := l.transact(ctx, 1, XfrBlock(0, 0, []byte{1}), time.Second)
			results <- res{m, err}
		}()
		cmd := f.reply(t, func(cmd Message) [][]byte {
			return [][]byte{
				{0x80, 0x01}, // runt: dropped
				frameFor(Message{Slot: 7}, RDRToPCDataBlock, [3]byte{}, nil),                   // no slot 7: dropped
				frameFor(Message{Slot: 0, Seq: cmd.Seq}, RDRToPCDataBlock, [3]byte{}, nil),     // slot 0 idle: dropped
				frameFor(Message{Slot: 1, Seq: cmd.Seq - 1}, RDRToPCDataBlock, [3]byte{}, nil), // stale
				frameFor(cmd, RDRToPCDataBlock, [3]byte{cmdStatusTimeExt << 6, 1}, nil),        // time extension
				frameFor(cmd, RDRToPCDataBlock, [3]byte{}, []byte{0x90, 0}),
			}
		})
		r := <-results
		if r.err != nil || !bytes.Equal(r.m.Data, []byte{0x90, 0}) || cmd.Slot != 1 {
			t.Fatalf("%v %v", r.m, r.err)
		}
	})
}

func TestLinkSeqSharedAndWraps(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, f := testLink(t, 2)
		go func() {
			for b := range f.out {
				cmd, _ := ParseMessage(b)
				f.in <- frameFor(cmd, RDRToPCSlotStatus, [3]byte{}, nil)
			}
		}()
		defer close(f.out)
		var seqs []byte
		for i := 0; i < 300; i++ {
			if _, err := l.transact(context.Background(), i%2, GetSlotStatus(), time.Second); err != nil {
				t.Fatal(err)
			}
			seqs = append(seqs, l.seq-1)
		}
		for i := 1; i < len(seqs); i++ {
			if seqs[i] != seqs[i-1]+1 {
				t.Fatalf("bSeq %d after %d", seqs[i], seqs[i-1])
			}
		}
	})
}

func TestLinkErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		frames func(cmd Message) [][]byte
		want   []error
		text   string
	}{
		{"dwLength mismatch (QEMU GetParameters)", func(cmd Message) [][]byte {
			return [][]byte{append(frameFor(cmd, RDRToPCParameters, [3]byte{}, nil), make([]byte, 7)...)}
		}, []error{ErrFrame}, "dwLength 0 but 7"},
		{"wrong response type", func(cmd Message) [][]byte {
			return [][]byte{frameFor(cmd, RDRToPCSlotStatus, [3]byte{}, nil)}
		}, []error{ErrFrame}, "answered with SlotStatus"},
		{"too many stale frames", func(cmd Message) [][]byte {
			var fs [][]byte
			for i := 0; i <= maxStale; i++ {
				fs = append(fs, frameFor(Message{Slot: cmd.Slot, Seq: cmd.Seq + 1}, RDRToPCDataBlock, [3]byte{}, nil))
			}
			return fs
		}, []error{ErrFrame}, "more than 10 stale"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				l, f := testLink(t, 1)
				errc := make(chan error, 1)
				go func() {
					_, err := l.transact(context.Background(), 0, XfrBlock(0, 0, nil), time.Hour)
					errc <- err
				}()
				f.reply(t, tc.frames)
				err := <-errc
				for _, w := range tc.want {
					if !errors.Is(err, w) {
						t.Errorf("%v is not %v", err, w)
					}
				}
				if err == nil || !strings.Contains(err.Error(), tc.text) || !strings.Contains(err.Error(), "Test Reader slot 0") {
					t.Errorf("error %v lacks %q", err, tc.text)
				}
			})
		})
	}
}

func TestLinkTimeExtensionMultiplier(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, f := testLink(t, 1)
		start := time.Now()
		errc := make(chan error, 1)
		go func() {
			_, err := l.transact(context.Background(), 0, XfrBlock(0, 0, nil), time.Second)
			errc <- err
		}()
		cmd := f.reply(t, func(cmd Message) [][]byte {
			return [][]byte{frameFor(cmd, RDRToPCDataBlock, [3]byte{cmdStatusTimeExt << 6, 5}, nil)}
		})
		// The reader asked for 5 × the timeout: an answer at 4.5 s is in time.
		time.Sleep(4500 * time.Millisecond)
		f.in <- frameFor(cmd, RDRToPCDataBlock, [3]byte{}, []byte{0x90, 0})
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d != 4500*time.Millisecond {
			t.Errorf("took %v", d)
		}
	})
}

func TestLinkAbortThenHung(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, f := testLink(t, 1)
		errc := make(chan error, 1)
		go func() {
			_, err := l.transact(context.Background(), 0, XfrBlock(0, 0, nil), time.Second)
			errc <- err
		}()
		cmd, _ := ParseMessage(<-f.out) // never answered
		abort, _ := ParseMessage(<-f.out)
		ctrl := <-f.ctrl
		if abort.Type != PCToRDRAbort || abort.Seq != cmd.Seq+1 || ctrl != [3]uint16{reqAbort, uint16(abort.Seq) << 8, 2} {
			t.Errorf("abort %v, control %v", abort, ctrl)
		}
		err := <-errc
		if !errors.Is(err, ErrTimeout) || !errors.Is(err, card.ErrMute) || !strings.Contains(err.Error(), "abort failed") {
			t.Fatalf("got %v", err)
		}
		<-l.done
		_, err = l.transact(context.Background(), 0, GetSlotStatus(), time.Second)
		if !errors.Is(err, ErrReaderHung) || !errors.Is(err, card.ErrRemoved) {
			t.Errorf("after hang: %v", err)
		}
	})
}

func TestLinkDeviceGone(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, f := testLink(t, 1)
		errc := make(chan error, 1)
		go func() {
			_, err := l.transact(context.Background(), 0, XfrBlock(0, 0, nil), time.Hour)
			errc <- err
		}()
		<-f.out
		close(f.gone)
		err := <-errc
		if !errors.Is(err, ErrReaderGone) || !errors.Is(err, card.ErrRemoved) {
			t.Errorf("got %v", err)
		}
	})
}
