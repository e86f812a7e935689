package pcsc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/wsrc-go/wsrc/card"
)

// OpenOptions choose how Open connects to a card.
type OpenOptions struct {
	// Shared connects in SCARD_SHARE_SHARED mode. The default is
	// SCARD_SHARE_EXCLUSIVE: the relayed card's state (selected files,
	// PIN status) must not be disturbed by other PC/SC clients.
	Shared bool
	// Protocols are the protocols pcscd may choose from; zero means
	// AnyProtocol (T=0 or T=1, as the ATR offers).
	Protocols Protocol
}

func (o OpenOptions) share() shareMode {
	if o.Shared {
		return shareShared
	}
	return shareExclusive
}

func (o OpenOptions) protocols() Protocol {
	if o.Protocols == 0 {
		return AnyProtocol
	}
	return o.Protocols
}

// MaxCommand is the longest command APDU Transmit accepts: pcsc-lite's
// MAX_BUFFER_SIZE_EXTENDED (4 header + 3 Lc + 65536 data + 3 Le + 2),
// enough for any extended APDU. Responses of up to 65536 data bytes plus
// the status word fit ebfe/scard's receive buffer.
const MaxCommand = 4 + 3 + 65536 + 3 + 2

// Card is a card connected through pcscd; it implements card.Card.
//
// A Card owns its own PC/SC context, so it survives other handles being
// released; it does not survive pcscd stopping (calls then fail with
// ErrServiceUnavailable and card.ErrRemoved, and the Card must be closed
// and reopened). Methods are safe for concurrent use; calls are
// serialised.
type Card struct {
	reader string
	opts   OpenOptions

	mu sync.Mutex // guards everything below
	// ctx and h are owned by the Card and released by Close.
	ctx    scardContext
	h      scardCard
	atr    []byte
	closed bool
}

var _ card.Card = (*Card)(nil)

// Open connects to the card in reader. It fails with an error wrapping
// card.ErrNoCard when the reader is empty, CodeSharingViolation when
// another client holds the card, ErrReaderUnavailable when the reader is
// unknown, and ErrServiceUnavailable when pcscd is not running.
func Open(ctx context.Context, reader string, opts OpenOptions) (*Card, error) {
	return open(ctx, realSystem, reader, opts)
}

func open(ctx context.Context, sys system, reader string, opts OpenOptions) (*Card, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("opening reader %q: %w", reader, err)
	}
	if p := opts.protocols(); p&^AnyProtocol != 0 {
		return nil, fmt.Errorf("opening reader %q: unsupported protocol set %v", reader, p)
	}
	sctx, err := sys.EstablishContext()
	if err != nil {
		return nil, wrapErr("SCardEstablishContext", reader, err)
	}
	h, err := sctx.Connect(reader, opts.share(), opts.protocols())
	if err != nil {
		_ = sctx.Release()
		return nil, wrapErr("SCardConnect", reader, err)
	}
	st, err := h.Status()
	if err != nil {
		_ = h.Disconnect(leaveCard)
		_ = sctx.Release()
		return nil, wrapErr("SCardStatus", reader, err)
	}
	return &Card{reader: reader, opts: opts, ctx: sctx, h: h, atr: bytes.Clone(st.ATR)}, nil
}

// Reader returns the name of the card's reader.
func (c *Card) Reader() string { return c.reader }

// Protocol returns the protocol negotiated for the card (T0 or T1).
func (c *Card) Protocol() Protocol {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0
	}
	return c.h.ActiveProtocol()
}

// ATR returns the answer-to-reset of the current power cycle.
func (c *Card) ATR() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.atr)
}

// Transmit sends one command APDU (short or extended, up to MaxCommand
// bytes) and returns the response APDU. A running SCardTransmit cannot be
// interrupted: ctx is checked before the call only. When the card was
// removed, the error wraps card.ErrRemoved.
//
// When another application sharing the card (OpenOptions.Shared) reset it,
// the command is not sent and the error wraps card.ErrReset and
// CodeResetCard; Transmit has acknowledged the reset (SCardReconnect
// leaving the card as it is) and refreshed the ATR, so the next call goes
// to the freshly reset card. The command is not retried: it was meant for
// the card's state before the reset.
func (c *Card) Transmit(ctx context.Context, command []byte) ([]byte, error) {
	if len(command) < 4 {
		return nil, fmt.Errorf("transmit on reader %q: command of %d bytes is shorter than an APDU header", c.reader, len(command))
	}
	if len(command) > MaxCommand {
		return nil, fmt.Errorf("transmit on reader %q: command of %d bytes is longer than %d", c.reader, len(command), MaxCommand)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, fmt.Errorf("transmit on reader %q: %w", c.reader, card.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("transmit on reader %q: %w", c.reader, err)
	}
	rsp, err := c.h.Transmit(command)
	if err != nil {
		if isCode(err, CodeResetCard) {
			return nil, c.acknowledgeReset(wrapErr("SCardTransmit", c.reader, err))
		}
		return nil, c.cardErr("SCardTransmit", err)
	}
	if len(rsp) < 2 {
		// pcscd reports success with an empty response when vpcd's card
		// vanished mid-APDU: a transport failure like any other.
		err := fmt.Errorf("transmit on reader %q: response of %d bytes has no status word", c.reader, len(rsp))
		if c.cardGone() {
			return nil, fmt.Errorf("%w: %w", err, card.ErrRemoved)
		}
		return nil, err
	}
	return rsp, nil
}

// Reset resets the card (WarmReset: SCardReconnect with SCARD_RESET_CARD;
// ColdReset: SCARD_UNPOWER_CARD) and returns the new ATR.
func (c *Card) Reset(ctx context.Context, kind card.ResetKind) ([]byte, error) {
	d := resetCard
	if kind == card.ColdReset {
		d = unpowerCard
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, fmt.Errorf("%s reset on reader %q: %w", kind, c.reader, card.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%s reset on reader %q: %w", kind, c.reader, err)
	}
	st, err := c.reconnect(d)
	if err != nil {
		return nil, fmt.Errorf("%s reset: %w", kind, err)
	}
	c.atr = bytes.Clone(st.ATR)
	return bytes.Clone(c.atr), nil
}

// reconnect calls SCardReconnect with d in the card's share mode and
// protocols, then SCardStatus. mu must be held.
func (c *Card) reconnect(d disposition) (cardStatus, error) {
	if err := c.h.Reconnect(c.opts.share(), c.opts.protocols(), d); err != nil {
		return cardStatus{}, c.cardErr("SCardReconnect", err)
	}
	st, err := c.h.Status()
	if err != nil {
		return cardStatus{}, c.cardErr("SCardStatus", err)
	}
	return st, nil
}

// Close disconnects (powering the card down when it was opened
// exclusively, leaving it as it is when shared) and releases the context.
// Close is safe to call more than once.
func (c *Card) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	d := unpowerCard
	if c.opts.Shared {
		d = leaveCard
	}
	err := c.h.Disconnect(d)
	if err != nil && !isGone(err) {
		err = wrapErr("SCardDisconnect", c.reader, err)
	} else {
		err = nil // the card or pcscd is gone: nothing left to release
	}
	if rerr := c.ctx.Release(); rerr != nil && err == nil && !isGone(rerr) {
		err = wrapErr("SCardReleaseContext", c.reader, rerr)
	}
	return err
}

// acknowledgeReset handles SCARD_W_RESET_CARD, resetErr: another handle
// reset the card (SCardReconnect or SCardDisconnect with SCARD_RESET_CARD
// or SCARD_UNPOWER_CARD), and pcsc-lite fails every call on this handle,
// SCardStatus included, with that code until the handle acknowledges it
// with SCardReconnect. It reconnects leaving the card as it is, takes the
// new ATR, and returns resetErr with what it means for the user; or the
// error of the acknowledgement, marked removed when the card is gone.
//
// After SCardDisconnect with SCARD_UNPOWER_CARD, pcsc-lite (1.9.9) leaves
// the card powered down, with the old ATR, and SCardReconnect with
// SCARD_LEAVE_CARD does not power it up (only SCardConnect does), so a
// real reader would fail every APDU (vpcd answers them regardless; this
// is read from pcsc-lite's source). So a card that SCardStatus reports
// unpowered (or whose protocol cannot be set up again: the PPS of a
// reconnect to a card powered down fails as SCARD_W_UNRESPONSIVE_CARD) is
// powered up with SCARD_UNPOWER_CARD: a cold reset of a card that lost
// its state anyway. mu must be held.
func (c *Card) acknowledgeReset(resetErr error) error {
	const ack = "acknowledging a reset by another application"
	st, err := c.reconnect(leaveCard)
	powerUp := errors.Is(err, CodeUnresponsiveCard) && !errors.Is(err, card.ErrRemoved)
	if err == nil {
		powerUp = st.State&statusPowered == 0
	}
	if powerUp {
		st, err = c.reconnect(unpowerCard)
	}
	if err != nil {
		// Removed meanwhile, or reset again before SCardStatus (then
		// the error wraps card.ErrReset too, and the next call
		// acknowledges again).
		return fmt.Errorf("%s: %w", ack, err)
	}
	c.atr = bytes.Clone(st.ATR)
	return fmt.Errorf("%w (the command was not sent; selected files, verified PINs and logical channels are lost)", resetErr)
}

// cardErr maps an error of a call on the card handle. Besides the code's own
// meaning it marks the error as card.ErrRemoved when the handle is dead:
// the card or reader went away, pcscd stopped, or a vague transport error
// after which SCardStatus says the card is gone.
func (c *Card) cardErr(op string, err error) error {
	e := wrapErr(op, c.reader, err)
	var pe *Error
	if !errors.As(e, &pe) {
		return e
	}
	switch pe.Code {
	case CodeRemovedCard:
	case CodeReaderUnavailable, CodeUnknownReader, CodeNoService, CodeServiceStopped,
		CodeInvalidHandle, CodeNoSmartcard:
		pe.Removed = true
	case CodeNotTransacted, CodeCommError, CodeUnknownError, CodeUnresponsiveCard,
		CodeCommDataLost, CodeNotReady:
		pe.Removed = c.cardGone()
	}
	return pe
}

// removalGrace is how long cardGone waits for pcscd to notice a removal
// that the reader driver already ran into: pcscd polls readers without
// card-event interrupts (vpcd, serial readers) about every 400 ms.
// removalPoll is how often it asks meanwhile. Variables so tests can
// change them.
var (
	removalGrace = 1500 * time.Millisecond
	removalPoll  = 50 * time.Millisecond
)

// cardGone asks pcscd whether the card is still there after a vague
// transport error. The driver can fail before pcscd's next presence poll,
// so a card still reported present gets removalGrace to change state.
//
// It asks with SCardStatus on the card's own handle, polled every
// removalPoll, and never with SCardGetStatusChange: that call is
// serialised process-wide (statusChangeMu, adapter.go) and a Watch in
// the same process holds it for up to its poll timeout, which would hold
// the user's error back by as much. SCardStatus needs no lock, and once
// pcscd has seen the removal (or a swap: the reader's event counter moved
// past the handle's) it fails with SCARD_W_REMOVED_CARD.
func (c *Card) cardGone() bool {
	deadline := time.Now().Add(removalGrace)
	for {
		st, err := c.h.Status()
		if err != nil {
			return isGone(err) || isCode(err, CodeNoSmartcard)
		}
		if st.State&statusPresent == 0 {
			return true
		}
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		time.Sleep(min(removalPoll, left))
	}
}

// isGone reports whether err means the handle is dead because the card,
// the reader or pcscd went away.
func isGone(err error) bool {
	for _, c := range []Code{CodeRemovedCard, CodeReaderUnavailable, CodeUnknownReader,
		CodeNoService, CodeServiceStopped, CodeInvalidHandle} {
		if isCode(err, c) {
			return true
		}
	}
	return false
}
