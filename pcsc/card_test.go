package pcsc

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/wsrc-go/wsrc/card"
)

// fakeWithCard returns a fake pcscd with one reader, "A", holding a card
// with ATR atrA.
func fakeWithCard() (*fakeSys, *fakeReader) {
	sys := newFakeSys()
	sys.addReader("A")
	sys.insert("A", atrA)
	return sys, sys.reader("A")
}

func openFake(t *testing.T, sys *fakeSys, reader string, opts OpenOptions) *Card {
	t.Helper()
	c, err := open(context.Background(), sys, reader, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestOpenShareModeAndProtocols(t *testing.T) {
	sys := newFakeSys()
	sys.addReader("A")
	sys.insert("A", atrA)

	c := openFake(t, sys, "A", OpenOptions{})
	if !bytes.Equal(c.ATR(), atrA) || c.Reader() != "A" || c.Protocol() != T1 {
		t.Fatalf("ATR %x reader %q protocol %v", c.ATR(), c.Reader(), c.Protocol())
	}
	r := sys.reader("A")
	if r.shares[0] != shareExclusive || r.protocols[0] != AnyProtocol {
		t.Fatalf("default Open used share %v protocols %v", r.shares[0], r.protocols[0])
	}
	// Exclusive: a second client is refused.
	_, err := open(context.Background(), sys, "A", OpenOptions{Shared: true})
	if !errors.Is(err, CodeSharingViolation) || !strings.Contains(err.Error(), `"A"`) {
		t.Fatalf("second Open = %v, want SCARD_E_SHARING_VIOLATION naming the reader", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if d := r.dispositions; !slices.Equal(d, []disposition{unpowerCard}) {
		t.Fatalf("exclusive Close dispositions %v, want unpower", d)
	}

	s1 := openFake(t, sys, "A", OpenOptions{Shared: true, Protocols: T0})
	s2 := openFake(t, sys, "A", OpenOptions{Shared: true})
	if s1.Protocol() != T0 {
		t.Fatalf("Protocols: T0 gave %v", s1.Protocol())
	}
	s1.Close()
	s2.Close()
	if d := r.dispositions[1:]; !slices.Equal(d, []disposition{leaveCard, leaveCard}) {
		t.Fatalf("shared Close dispositions %v, want leave", d)
	}
	if _, live, cards, _ := sys.counts(); live != 0 || cards != 0 {
		t.Fatalf("%d contexts, %d cards left", live, cards)
	}
}

func TestOpenErrors(t *testing.T) {
	sys := newFakeSys()
	sys.addReader("Empty")
	sys.addReader("Mute")
	sys.insert("Mute", nil)
	down := newFakeSys()
	down.setDown(true)
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()

	for _, tt := range []struct {
		name   string
		ctx    context.Context
		sys    *fakeSys
		reader string
		opts   OpenOptions
		is     error
	}{
		{"no card", context.Background(), sys, "Empty", OpenOptions{}, card.ErrNoCard},
		{"mute card", context.Background(), sys, "Mute", OpenOptions{}, card.ErrMute},
		{"unknown reader", context.Background(), sys, "Nope", OpenOptions{}, ErrReaderUnavailable},
		{"pcscd down", context.Background(), down, "Empty", OpenOptions{}, ErrServiceUnavailable},
		{"cancelled", cancelled, sys, "Empty", OpenOptions{}, context.Canceled},
		{"bad protocols", context.Background(), sys, "Empty", OpenOptions{Protocols: 4}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := open(tt.ctx, tt.sys, tt.reader, tt.opts)
			if err == nil {
				c.Close()
				t.Fatal("Open succeeded")
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Fatalf("err = %v, want %v", err, tt.is)
			}
			if !strings.Contains(err.Error(), tt.reader) {
				t.Fatalf("err %q does not name the reader", err)
			}
		})
	}
	if _, live, cards, _ := sys.counts(); live != 0 || cards != 0 {
		t.Fatalf("failed Opens left %d contexts, %d cards", live, cards)
	}
}

func TestOpenStatusFails(t *testing.T) {
	sys := newFakeSys()
	sys.addReader("A")
	sys.insert("A", atrA)
	sys.reader("A").failNext = CodeCommError
	if _, err := open(context.Background(), sys, "A", OpenOptions{}); !errors.Is(err, CodeCommError) {
		t.Fatalf("err = %v", err)
	}
	if _, live, cards, _ := sys.counts(); live != 0 || cards != 0 {
		t.Fatalf("left %d contexts, %d cards", live, cards)
	}
}

func TestTransmit(t *testing.T) {
	sys := newFakeSys()
	sys.addReader("A")
	sys.insert("A", atrA)
	r := sys.reader("A")
	var got []byte
	r.transmit = func(cmd []byte) ([]byte, error) {
		got = cmd
		rsp := make([]byte, 65536+2) // extended response: 65536 data bytes
		rsp[65536], rsp[65537] = 0x90, 0x00
		return rsp, nil
	}
	c := openFake(t, sys, "A", OpenOptions{})
	ctx := context.Background()

	ext := append([]byte{0x00, 0xd6, 0x00, 0x00, 0x00, 0xff, 0xff}, make([]byte, 65535)...)
	ext = append(ext, 0x00, 0x00)
	rsp, err := c.Transmit(ctx, ext)
	if err != nil || len(rsp) != 65538 || !bytes.Equal(got, ext) {
		t.Fatalf("extended transmit: %d bytes, %v", len(rsp), err)
	}

	for _, bad := range [][]byte{nil, {0x00, 0xa4, 0x00}, make([]byte, MaxCommand+1)} {
		if _, err := c.Transmit(ctx, bad); err == nil {
			t.Errorf("Transmit of %d bytes succeeded", len(bad))
		}
	}
	r.transmit = func([]byte) ([]byte, error) { return []byte{0x90}, nil }
	if _, err := c.Transmit(ctx, []byte{0, 0xa4, 0, 0}); err == nil {
		t.Error("a 1-byte response was accepted")
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := c.Transmit(cancelled, []byte{0, 0xa4, 0, 0}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled Transmit = %v", err)
	}
	c.Close()
	if _, err := c.Transmit(ctx, []byte{0, 0xa4, 0, 0}); !errors.Is(err, card.ErrClosed) {
		t.Errorf("Transmit after Close = %v", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	if c.Protocol() != 0 {
		t.Error("closed card reports a protocol")
	}
}

func TestTransmitRemoval(t *testing.T) {
	apdu := []byte{0x00, 0xa4, 0x00, 0x00}
	for _, tt := range []struct {
		name    string
		setup   func(sys *fakeSys)
		removed bool
		is      error
	}{
		{"removed card", func(s *fakeSys) { s.remove("A") }, true, CodeRemovedCard},
		{"swapped card", func(s *fakeSys) { s.swap("A", atrB) }, true, CodeRemovedCard},
		{"reader unplugged", func(s *fakeSys) { s.removeReader("A") }, true, ErrReaderUnavailable},
		{"pcscd stopped", func(s *fakeSys) { s.setDown(true) }, true, ErrServiceUnavailable},
		{"driver error, card gone", func(s *fakeSys) {
			s.reader("A").transmit = func([]byte) ([]byte, error) {
				s.remove("A") // pcscd notices only after the driver failed
				return nil, CodeNotTransacted
			}
		}, true, CodeNotTransacted},
		{"driver error, status fails", func(s *fakeSys) {
			r := s.reader("A")
			r.transmit = func([]byte) ([]byte, error) { return nil, CodeCommError }
			r.failStatus = CodeNoSmartcard
		}, true, CodeCommError},
		{"driver error, card still there", func(s *fakeSys) {
			r := s.reader("A")
			r.transmit = func([]byte) ([]byte, error) { return nil, CodeNotTransacted }
		}, false, CodeNotTransacted},
		{"driver error, pcscd notices at its next poll", func(s *fakeSys) {
			s.reader("A").transmit = func([]byte) ([]byte, error) {
				go func() {
					time.Sleep(400 * time.Millisecond)
					s.remove("A")
				}()
				return nil, CodeNotTransacted
			}
		}, true, CodeNotTransacted},
		{"driver error, card swapped meanwhile", func(s *fakeSys) {
			s.reader("A").transmit = func([]byte) ([]byte, error) {
				go func() {
					time.Sleep(400 * time.Millisecond)
					s.swap("A", atrB)
				}()
				return nil, CodeCommError
			}
		}, true, CodeCommError},
		{"empty response, card gone", func(s *fakeSys) {
			s.reader("A").transmit = func([]byte) ([]byte, error) {
				s.remove("A")
				return []byte{}, nil
			}
		}, true, card.ErrRemoved},
		{"empty response, card still there", func(s *fakeSys) {
			s.reader("A").transmit = func([]byte) ([]byte, error) { return []byte{0x90}, nil }
		}, false, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				sys := newFakeSys()
				sys.addReader("A")
				sys.insert("A", atrA)
				c := openFake(t, sys, "A", OpenOptions{})
				tt.setup(sys)
				_, err := c.Transmit(context.Background(), apdu)
				if err == nil {
					t.Fatal("Transmit succeeded")
				}
				if got := errors.Is(err, card.ErrRemoved); got != tt.removed {
					t.Fatalf("errors.Is(%v, card.ErrRemoved) = %v, want %v", err, got, tt.removed)
				}
				if (tt.is != nil && !errors.Is(err, tt.is)) || !strings.Contains(err.Error(), `"A"`) {
					t.Fatalf("err = %v, want %v naming the reader", err, tt.is)
				}
				if err := c.Close(); err != nil {
					t.Fatalf("Close after failure: %v", err)
				}
				if _, live, cards, _ := sys.counts(); live != 0 || cards != 0 {
					t.Fatalf("left %d contexts, %d cards", live, cards)
				}
				// The removal check must not use SCardGetStatusChange:
				// a Watch in the same process holds its lock.
				if n := sys.statusWaits; n != 0 {
					t.Fatalf("the removal check called SCardGetStatusChange %d times", n)
				}
			})
		})
	}
}

// resetByOther connects to reader as another application would, in shared
// mode with its own context, and resets the card with d.
func resetByOther(t *testing.T, sys system, reader string, d disposition, disconnect bool) {
	t.Helper()
	sctx, err := sys.EstablishContext()
	if err != nil {
		t.Fatal(err)
	}
	defer sctx.Release()
	h, err := sctx.Connect(reader, shareShared, AnyProtocol)
	if err != nil {
		t.Fatal(err)
	}
	if disconnect {
		err = h.Disconnect(d)
	} else {
		err = h.Reconnect(shareShared, AnyProtocol, d)
		if derr := h.Disconnect(leaveCard); err == nil {
			err = derr
		}
	}
	if err != nil {
		t.Fatalf("other application's reset: %v", err)
	}
}

// TestTransmitAfterForeignReset: another application reset the shared
// card. Transmit does not send the command, reports card.ErrReset (not a
// removal), acknowledges the reset (powering the card up when the other
// application left it powered down) and takes the new ATR; the next
// Transmit reaches the card.
func TestTransmitAfterForeignReset(t *testing.T) {
	apdu := []byte{0x00, 0xa4, 0x00, 0x00}
	for _, tt := range []struct {
		name string
		// The other application's SCardReconnect, or with disconnect
		// its SCardDisconnect, with d.
		d          disposition
		disconnect bool
		// ppsFails: reconnecting to the powered-down card fails.
		ppsFails bool
		// ack: our SCardReconnects that succeed.
		ack []disposition
	}{
		{"reconnect reset", resetCard, false, false, []disposition{leaveCard}},
		{"reconnect unpower", unpowerCard, false, false, []disposition{leaveCard}},
		{"disconnect reset", resetCard, true, false, []disposition{leaveCard}},
		{"disconnect unpower", unpowerCard, true, false, []disposition{leaveCard, unpowerCard}},
		{"disconnect unpower, no protocol without power", unpowerCard, true, true, []disposition{unpowerCard}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			sys, r := fakeWithCard()
			r.ppsFailsUnpowered = tt.ppsFails
			var sent [][]byte
			r.transmit = func(cmd []byte) ([]byte, error) {
				sent = append(sent, cmd)
				return []byte{0x90, 0x00}, nil
			}
			r.atrs = [][]byte{atrB}
			c := openFake(t, sys, "A", OpenOptions{Shared: true, Protocols: T1})
			ctx := context.Background()

			resetByOther(t, sys, "A", tt.d, tt.disconnect)
			if _, err := c.h.Status(); !errors.Is(err, CodeResetCard) {
				t.Fatalf("the fake's SCardStatus with a reset pending = %v, want SCARD_W_RESET_CARD", err)
			}
			ours := len(r.dispositions)
			_, err := c.Transmit(ctx, apdu)
			if !errors.Is(err, card.ErrReset) || !errors.Is(err, CodeResetCard) || errors.Is(err, card.ErrRemoved) {
				t.Fatalf("Transmit = %v, want card.ErrReset and SCARD_W_RESET_CARD, not card.ErrRemoved", err)
			}
			var pe *Error
			if !errors.As(err, &pe) || pe.Op != "SCardTransmit" || !strings.Contains(err.Error(), `"A"`) ||
				!strings.Contains(err.Error(), "reset by another application") {
				t.Fatalf("err %q: want an SCardTransmit *Error naming the reader and the reset", err)
			}
			if len(sent) != 0 {
				t.Fatalf("the command reached the card: %x", sent)
			}
			if !bytes.Equal(c.ATR(), atrB) {
				t.Fatalf("ATR %x after the reset, want %x", c.ATR(), atrB)
			}
			// Acknowledged with SCardReconnect in the card's own share
			// mode, leaving the card as it is unless it is powered down.
			if d := r.dispositions[ours:]; !slices.Equal(d, tt.ack) {
				t.Fatalf("acknowledged with dispositions %v, want %v", d, tt.ack)
			}
			if sh := r.shares[len(r.shares)-1]; sh != shareShared {
				t.Fatalf("acknowledged in share mode %v, want shared", sh)
			}
			rsp, err := c.Transmit(ctx, apdu)
			if err != nil || !bytes.Equal(rsp, []byte{0x90, 0x00}) || len(sent) != 1 {
				t.Fatalf("next Transmit = %x, %v (%d commands reached the card)", rsp, err, len(sent))
			}
		})
	}
}

// TestTransmitForeignResetAcknowledgeFails: when the acknowledging
// SCardReconnect (or the SCardStatus after it) fails, Transmit reports
// that, as a removal when the card is gone.
func TestTransmitForeignResetAcknowledgeFails(t *testing.T) {
	for _, tt := range []struct {
		name    string
		setup   func(r *fakeReader)
		op      string
		removed bool
		is      error
	}{
		// pcsc-lite 1.9.9 answers SCardReconnect on a card it saw go
		// with SCARD_E_NO_SMARTCARD.
		{"card gone", func(r *fakeReader) { r.failNext = CodeNoSmartcard }, "SCardReconnect", true, card.ErrNoCard},
		{"card swapped", func(r *fakeReader) { r.failNext = CodeRemovedCard }, "SCardReconnect", true, CodeRemovedCard},
		{"driver error, card gone", func(r *fakeReader) {
			r.failNext = CodeCommError
			r.failStatus = CodeRemovedCard
		}, "SCardReconnect", true, CodeCommError},
		{"driver error, card still there", func(r *fakeReader) { r.failNext = CodeCommError }, "SCardReconnect", false, CodeCommError},
		{"status fails", func(r *fakeReader) { r.failStatus = CodeRemovedCard }, "SCardStatus", true, CodeRemovedCard},
		{"card left powered down, mute", func(r *fakeReader) {
			r.unpowered, r.ppsFailsUnpowered, r.failNext = true, true, CodeUnresponsiveCard
		}, "SCardReconnect", false, card.ErrMute},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				sys, r := fakeWithCard()
				r.atrs = [][]byte{atrB}
				c := openFake(t, sys, "A", OpenOptions{Shared: true})
				resetByOther(t, sys, "A", resetCard, false)
				tt.setup(r)
				_, err := c.Transmit(context.Background(), []byte{0x00, 0xa4, 0x00, 0x00})
				if err == nil {
					t.Fatal("Transmit succeeded")
				}
				if got := errors.Is(err, card.ErrRemoved); got != tt.removed {
					t.Fatalf("errors.Is(%v, card.ErrRemoved) = %v, want %v", err, got, tt.removed)
				}
				var pe *Error
				if !errors.Is(err, tt.is) || !errors.As(err, &pe) || pe.Op != tt.op ||
					!strings.Contains(err.Error(), `"A"`) || !strings.Contains(err.Error(), "acknowledging a reset") {
					t.Fatalf("err = %v, want %v from %s naming the reader and the reset", err, tt.is, tt.op)
				}
				if !bytes.Equal(c.ATR(), atrA) {
					t.Fatalf("ATR changed to %x although no SCardStatus said so", c.ATR())
				}
				if err := c.Close(); err != nil {
					t.Fatalf("Close: %v", err)
				}
			})
		})
	}
}

// TestResetWithForeignResetPending: Reset works on a handle that has not
// yet acknowledged another application's reset (its SCardReconnect does),
// and leaves a reset pending for that application in turn.
func TestResetWithForeignResetPending(t *testing.T) {
	sys, r := fakeWithCard()
	r.atrs = [][]byte{atrB, atrA}
	ctx := context.Background()
	c := openFake(t, sys, "A", OpenOptions{Shared: true})
	other := openFake(t, sys, "A", OpenOptions{Shared: true})
	if _, err := other.Reset(ctx, card.ColdReset); err != nil {
		t.Fatal(err)
	}
	atr, err := c.Reset(ctx, card.WarmReset)
	if err != nil || !bytes.Equal(atr, atrA) || !bytes.Equal(c.ATR(), atrA) {
		t.Fatalf("Reset with a reset pending = %x, %v; want ATR %x", atr, err, atrA)
	}
	if _, err := c.Transmit(ctx, []byte{0x00, 0xa4, 0x00, 0x00}); err != nil {
		t.Fatalf("Transmit after Reset: %v", err)
	}
	if _, err := other.Transmit(ctx, []byte{0x00, 0xa4, 0x00, 0x00}); !errors.Is(err, card.ErrReset) {
		t.Fatalf("the other application's Transmit after our Reset = %v, want card.ErrReset", err)
	}
	if _, err := other.Transmit(ctx, []byte{0x00, 0xa4, 0x00, 0x00}); err != nil {
		t.Fatalf("the other application's next Transmit: %v", err)
	}
}

func TestReset(t *testing.T) {
	sys := newFakeSys()
	sys.addReader("A")
	sys.insert("A", atrA)
	r := sys.reader("A")
	r.atrs = [][]byte{atrB, atrA}
	c := openFake(t, sys, "A", OpenOptions{})
	ctx := context.Background()

	atr, err := c.Reset(ctx, card.WarmReset)
	if err != nil || !bytes.Equal(atr, atrB) || !bytes.Equal(c.ATR(), atrB) {
		t.Fatalf("warm reset: %x, %v", atr, err)
	}
	atr, err = c.Reset(ctx, card.ColdReset)
	if err != nil || !bytes.Equal(atr, atrA) {
		t.Fatalf("cold reset: %x, %v", atr, err)
	}
	if !slices.Equal(r.dispositions, []disposition{resetCard, unpowerCard}) {
		t.Fatalf("dispositions %v", r.dispositions)
	}
	if r.shares[1] != shareExclusive {
		t.Fatalf("Reconnect share mode %v", r.shares[1])
	}
	atr[0] = 0
	if c.ATR()[0] == 0 {
		t.Fatal("Reset returned the Card's own ATR slice")
	}

	sys.remove("A")
	if _, err := c.Reset(ctx, card.WarmReset); !errors.Is(err, card.ErrRemoved) || !strings.Contains(err.Error(), "warm reset") {
		t.Fatalf("reset of removed card = %v", err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := c.Reset(cancelled, card.ColdReset); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled reset = %v", err)
	}
	c.Close()
	if _, err := c.Reset(ctx, card.ColdReset); !errors.Is(err, card.ErrClosed) {
		t.Fatalf("reset after Close = %v", err)
	}
}

func TestResetStatusFails(t *testing.T) {
	sys := newFakeSys()
	sys.addReader("A")
	sys.insert("A", atrA)
	c := openFake(t, sys, "A", OpenOptions{})
	sys.reader("A").failStatus = CodeRemovedCard
	if _, err := c.Reset(context.Background(), card.ColdReset); !errors.Is(err, card.ErrRemoved) || !strings.Contains(err.Error(), "SCardStatus") {
		t.Fatalf("err = %v", err)
	}
}

func TestCloseWhenPcscdGone(t *testing.T) {
	sys := newFakeSys()
	sys.addReader("A")
	sys.insert("A", atrA)
	c := openFake(t, sys, "A", OpenOptions{})
	sys.setDown(true)
	if err := c.Close(); err != nil {
		t.Fatalf("Close with pcscd gone = %v, want nil (nothing to release)", err)
	}
}
