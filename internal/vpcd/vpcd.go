// Package vpcd is the virtual-card side of vsmartcard's vpcd protocol: it
// puts a simulated card (card/sim, or any Card) or a remote card (a Link:
// `wsrc vpcd`, internal/vpcdbridge) into a vpcd reader slot of pcscd, so
// that the PC/SC stack sees a real reader with a card in it.
//
// Data flow, as in the real-stack tests of pcsc/ and in cmd/wsrc-vcard:
//
//	sim.Card ◄─ vpcd.Serve ──TCP──► vpcd driver in pcscd ◄── libpcsclite ◄── pcsc/
//
// The protocol: vpcd (the IFD handler libifdvpcd.so inside pcscd) listens
// on one TCP port per slot (DEVICENAME /dev/null:PORT in its reader.conf
// entry opens PORT and PORT+1); a virtual card connects to it, and a
// connected card is a present card. Each message, in both directions, is a
// 2-byte big-endian length and a payload. vpcd sends a 1-byte payload for
// a control code — 0 power off, 1 power on, 2 reset, 4 get ATR (answered
// with the ATR; the others are not answered) — and a longer payload for a
// command APDU, answered with the response APDU. vpcd asks for the ATR on
// every presence poll (pcscd polls about every 400 ms), so closing the
// connection is removing the card, and connecting again is inserting it.
// Payloads are at most 65535 bytes (the length field), which bounds
// responses to 65533 data bytes plus the status word.
package vpcd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/wsrc-go/wsrc/card"
)

// Control codes vpcd sends as 1-byte payloads.
const (
	CtrlPowerOff byte = 0
	CtrlPowerOn  byte = 1
	CtrlReset    byte = 2
	CtrlATR      byte = 4
)

// MaxPayload is the longest payload the 2-byte length allows.
const MaxPayload = 0xFFFF

// Card is what the virtual card needs from a simulated card; *sim.Card
// satisfies it. Process gets a raw command APDU and returns the raw
// response APDU (data and SW1 SW2).
type Card interface {
	ATR() []byte
	Process(cmd []byte) []byte
}

// Resetter is implemented by cards that keep state across power cycles
// (*sim.Card does). vpcd's reset becomes Reset(WarmReset); power on after
// power off becomes Reset(ColdReset). The returned ATR is ignored: vpcd
// asks for it with CtrlATR.
type Resetter interface {
	Reset(ctx context.Context, kind card.ResetKind) ([]byte, error)
}

// Link is a card whose every exchange may fail, such as a remote card
// reached over the network (wsrc vpcd). ServeLink delivers vpcd's
// requests to it; an error from Transmit or Reset ends the connection to
// vpcd, which pcscd sees as the card's removal. *sim.Card is a Card, not a
// Link; ServeConn adapts a Card.
type Link interface {
	// ATR returns the card's current ATR. vpcd asks for it on every
	// presence poll (about every 400 ms), so it must not block.
	ATR() []byte
	// Transmit sends one command APDU and returns the response APDU.
	Transmit(ctx context.Context, cmd []byte) ([]byte, error)
	// Reset resets the card: WarmReset for vpcd's reset, ColdReset for
	// power on after power off. The returned ATR is not used: vpcd asks
	// for it with CtrlATR, which ATR answers.
	Reset(ctx context.Context, kind card.ResetKind) ([]byte, error)
}

// PowerOffer is implemented by Links that act on vpcd's power off (a
// shared remote card is released then); an error ends the connection.
type PowerOffer interface {
	PowerOff(ctx context.Context) error
}

// ErrMessage is wrapped by errors about a malformed message from vpcd.
var ErrMessage = errors.New("malformed vpcd message")

// cardLink adapts a Card (which cannot fail) to a Link.
type cardLink struct{ c Card }

func (l cardLink) ATR() []byte { return l.c.ATR() }

func (l cardLink) Transmit(_ context.Context, cmd []byte) ([]byte, error) {
	rsp := l.c.Process(cmd)
	if len(rsp) < 2 {
		rsp = []byte{0x6F, 0x00} // no precise diagnosis
	}
	return rsp, nil
}

func (l cardLink) Reset(ctx context.Context, kind card.ResetKind) ([]byte, error) {
	if r, ok := l.c.(Resetter); ok {
		_, _ = r.Reset(ctx, kind)
	}
	return nil, nil
}

// session is the card's state on one connection, owned by the serving
// goroutine.
type session struct {
	l       Link
	powered bool
	// coldNext is set at the start and by a power off: the next power on
	// is a cold reset. It starts false for a Card (a simulated card is
	// fresh when inserted) and true for a Link served with
	// ResetAtPowerOn.
	coldNext bool
}

// handle answers one payload. reply is nil for control codes that get no
// answer. An error ends the connection.
func (s *session) handle(ctx context.Context, msg []byte) (reply []byte, err error) {
	switch len(msg) {
	case 0:
		return nil, fmt.Errorf("%w: empty payload", ErrMessage)
	case 1:
		switch msg[0] {
		case CtrlPowerOff:
			if p, ok := s.l.(PowerOffer); ok {
				if err := p.PowerOff(ctx); err != nil {
					return nil, fmt.Errorf("power off: %w", err)
				}
			}
			s.powered, s.coldNext = false, true
		case CtrlPowerOn:
			if s.coldNext {
				if _, err := s.l.Reset(ctx, card.ColdReset); err != nil {
					return nil, fmt.Errorf("power on (cold reset): %w", err)
				}
			}
			s.powered, s.coldNext = true, false
		case CtrlReset:
			if _, err := s.l.Reset(ctx, card.WarmReset); err != nil {
				return nil, fmt.Errorf("reset: %w", err)
			}
			s.powered, s.coldNext = true, false
		case CtrlATR:
			atr := s.l.ATR()
			if len(atr) == 0 || len(atr) > MaxPayload {
				return nil, fmt.Errorf("card has an ATR of %d bytes", len(atr))
			}
			return atr, nil
		default:
			// Unknown control codes are ignored, as vpcd expects no
			// answer to them.
		}
		return nil, nil
	}
	rsp, err := s.l.Transmit(ctx, msg)
	if err != nil {
		return nil, fmt.Errorf("APDU %x: %w", msg[:4], err)
	}
	switch {
	case len(rsp) < 2:
		rsp = []byte{0x6F, 0x00} // no precise diagnosis
	case len(rsp) > MaxPayload:
		rsp = []byte{0x67, 0x00} // cannot be carried: ask for a shorter Le
	}
	return rsp, nil
}

// readMsg reads one length-prefixed payload.
func readMsg(r io.Reader, buf []byte) ([]byte, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(hdr[:]))
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("reading %d-byte payload: %w", n, err)
	}
	return buf, nil
}

// writeMsg writes one length-prefixed payload in a single Write.
func writeMsg(w io.Writer, p []byte) error {
	if len(p) > MaxPayload {
		return fmt.Errorf("payload of %d bytes is longer than %d", len(p), MaxPayload)
	}
	out := make([]byte, 2+len(p))
	binary.BigEndian.PutUint16(out, uint16(len(p)))
	copy(out[2:], p)
	_, err := w.Write(out)
	return err
}

// ServeConn serves c over conn, an established connection to vpcd, until
// ctx is done (it then closes conn and returns nil), vpcd closes the
// connection (nil), or an error. ServeConn closes conn before returning.
func ServeConn(ctx context.Context, conn net.Conn, c Card) error {
	return serve(ctx, conn, &session{l: cardLink{c}}, 0)
}

// ErrSilent is wrapped by ServeLink's error when vpcd sends nothing within
// LinkOptions.FirstMessageTimeout: vpcd accepted the connection (the
// kernel does, into its backlog) but does not serve it, because another
// card already occupies the slot.
var ErrSilent = errors.New("vpcd sent nothing")

// LinkOptions configure ServeLink.
type LinkOptions struct {
	// FirstMessageTimeout, if positive, bounds the wait for vpcd's first
	// message (vpcd asks for the ATR about every 400 ms while it serves
	// the slot); see ErrSilent.
	FirstMessageTimeout time.Duration
	// ResetAtPowerOn makes the first power on a cold reset too, as every
	// later power on after a power off is: the application then finds
	// the card as freshly powered, whatever its state before insertion.
	ResetAtPowerOn bool
}

// ServeLink serves l over conn like ServeConn, and also returns (with
// conn closed) when Transmit or Reset fail: the card is then removed from
// pcscd's point of view, and the error says why.
func ServeLink(ctx context.Context, conn net.Conn, l Link, opts LinkOptions) error {
	return serve(ctx, conn, &session{l: l, coldNext: opts.ResetAtPowerOn}, opts.FirstMessageTimeout)
}

func serve(ctx context.Context, conn net.Conn, s *session, firstTimeout time.Duration) error {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	defer conn.Close()
	if firstTimeout > 0 {
		_ = conn.SetReadDeadline(time.Now().Add(firstTimeout))
	}
	var buf []byte
	for first := true; ; first = false {
		msg, err := readMsg(conn, buf)
		var ne net.Error
		switch {
		case err == nil:
		case ctx.Err() != nil || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed):
			return nil
		case first && firstTimeout > 0 && errors.As(err, &ne) && ne.Timeout():
			return fmt.Errorf("vpcd connection: %w within %v (is another card in this slot?)", ErrSilent, firstTimeout)
		default:
			return fmt.Errorf("vpcd connection: %w", err)
		}
		if first && firstTimeout > 0 {
			_ = conn.SetReadDeadline(time.Time{})
		}
		buf = msg[:0]
		reply, err := s.handle(ctx, msg)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("vpcd connection: %w", err)
		}
		if reply == nil {
			continue
		}
		if err := writeMsg(conn, reply); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("vpcd connection: writing reply: %w", err)
		}
	}
}

// Dial connects to vpcd at addr (host:port), bounded by a timeout: the
// card is then inserted, and pcscd sees it at its next presence poll.
func Dial(ctx context.Context, addr string) (net.Conn, error) { return dial(ctx, addr) }

// dialTimeout bounds each connection attempt.
const dialTimeout = 5 * time.Second

// Serve connects to vpcd at addr (host:port, normally 127.0.0.1:35963 for
// the first slot) and serves c until ctx is done or the connection ends;
// see ServeConn. It does not reconnect; Run does.
func Serve(ctx context.Context, addr string, c Card) error {
	conn, err := dial(ctx, addr)
	if err != nil {
		return err
	}
	return ServeConn(ctx, conn, c)
}

func dial(ctx context.Context, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: dialTimeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connecting to vpcd at %s: %w", addr, err)
	}
	return conn, nil
}

// Slot is one vpcd reader slot that a test can insert a virtual card into
// and remove it from. Insert connects to vpcd; Remove disconnects and
// waits until the serving goroutine has exited. A Slot holds at most one
// card at a time; its methods are safe for concurrent use.
type Slot struct {
	addr string

	mu sync.Mutex // guards the fields below
	// cancel and done belong to the serving goroutine of the inserted
	// card, nil when empty.
	cancel context.CancelFunc
	done   chan struct{}
	err    error // the last card's ServeConn result, set before done closes
}

// NewSlot returns an empty slot for the vpcd port at addr.
func NewSlot(addr string) *Slot { return &Slot{addr: addr} }

// Addr returns the vpcd address of the slot.
func (s *Slot) Addr() string { return s.addr }

// Insert connects c to vpcd. It returns once the TCP connection is up;
// pcscd notices the card at its next presence poll. It fails if a card is
// already inserted.
func (s *Slot) Insert(ctx context.Context, c Card) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done != nil {
		select {
		case <-s.done:
		default:
			return fmt.Errorf("vpcd slot %s: a card is already inserted", s.addr)
		}
	}
	conn, err := dial(ctx, s.addr)
	if err != nil {
		return fmt.Errorf("inserting card: %w", err)
	}
	sctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	s.cancel, s.done, s.err = cancel, done, nil
	go func() {
		err := ServeConn(sctx, conn, c)
		s.mu.Lock()
		if s.done == done {
			s.err = err
		}
		s.mu.Unlock()
		close(done)
	}()
	return nil
}

// Remove disconnects the inserted card, if any, and waits for its
// goroutine to exit. It returns the error that ended the connection
// earlier, if vpcd or the card broke it.
func (s *Slot) Remove() error {
	s.mu.Lock()
	cancel, done := s.cancel, s.done
	s.cancel = nil
	s.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	<-done
	s.mu.Lock()
	defer s.mu.Unlock()
	err := s.err
	if s.done == done {
		s.done, s.err = nil, nil
	}
	return err
}

// Done returns a channel closed when the inserted card's connection ends
// (removal, or vpcd closing it, e.g. when pcscd stops); nil when empty.
func (s *Slot) Done() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.done
}
