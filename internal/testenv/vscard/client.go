package vscard

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
)

// Card is what a Client serves behind the emulated reader: the ATR sent on
// insertion and an APDU processor. *sim.Card (package card/sim) fits.
// Process is called from the Client's read loop, one command at a time.
// A nil response plays a mute card: the Client answers with an Error,
// which QEMU turns into a failed XfrBlock.
type Card interface {
	ATR() []byte
	Process(command []byte) []byte
}

// Errors of the client side. A refused request is a *RefusedError.
var (
	// ErrClosed: the connection ended (or Run returned) before the
	// request was acknowledged.
	ErrClosed = errors.New("vscard: connection closed")
	// ErrBadATR: the ATR is empty or longer than MaxATRLen.
	ErrBadATR = errors.New("vscard: bad ATR length")
)

// RefusedError is QEMU's non-zero answer to a request.
type RefusedError struct {
	Request MsgType
	Code    ErrorCode
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("vscard: %v refused: %v", e.Request, e.Code)
}

// Options configure a Client.
type Options struct {
	// ReaderName is sent with ReaderAdd (QEMU ignores it; logs show it).
	ReaderName string
	// Logger receives one debug line per message; nil discards.
	Logger *slog.Logger
}

// Client is the card owner's end of one VSCard connection (one emulated
// reader). Run owns the connection's read side and answers APDUs; Insert
// and Remove may be called from any goroutine once Ready is closed, and
// block until QEMU acknowledges them.
type Client struct {
	conn io.ReadWriteCloser
	opts Options
	log  *slog.Logger

	ready chan struct{} // closed by Run when ReaderAdd is acknowledged
	done  chan struct{} // closed when Run returns

	wmu sync.Mutex // guards writes to conn: one message per Write

	mu       sync.Mutex      // guards the fields below
	readerID uint32          // set by Run before ready is closed
	card     Card            // the card QEMU's APDUs go to; nil when absent
	pending  []chan ackReply // acknowledgements awaited, in request order
	closed   bool            // Run has returned; no new requests
	runErr   error           // why Run returned
}

type ackReply struct {
	code ErrorCode
	err  error // non-nil when the connection ended first
}

// NewClient returns a Client on conn, which it closes when Run returns.
func NewClient(conn io.ReadWriteCloser, opts Options) *Client {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Client{
		conn:     conn,
		opts:     opts,
		log:      log,
		ready:    make(chan struct{}),
		done:     make(chan struct{}),
		readerID: ReaderIDUndefined,
	}
}

// Ready is closed once the reader exists on QEMU's side; Insert and Remove
// wait for it.
func (c *Client) Ready() <-chan struct{} { return c.ready }

// Done is closed when Run has returned.
func (c *Client) Done() <-chan struct{} { return c.done }

// Run does the handshake (Init, ReaderAdd), then answers QEMU's messages
// until ctx ends or the connection fails. It closes the connection and
// fails pending requests with ErrClosed before it returns. It returns nil
// when the peer closed the connection between messages or ctx ended.
func (c *Client) Run(ctx context.Context) (err error) {
	defer close(c.done)
	stop := context.AfterFunc(ctx, func() { c.conn.Close() })
	defer stop()
	defer func() {
		c.conn.Close()
		if ctx.Err() != nil || errors.Is(err, io.EOF) {
			err = nil
		}
		c.shutdown(err)
	}()

	if err := c.write(MsgInit, ReaderIDUndefined, Init{Version: Version, Capabilities: []uint32{0}}.Marshal()); err != nil {
		return fmt.Errorf("sending Init: %w", err)
	}
	if err := c.awaitInit(); err != nil {
		return err
	}
	addAck, err := c.request(MsgReaderAdd, ReaderIDUndefined, []byte(c.opts.ReaderName))
	if err != nil {
		return err
	}
	for {
		m, err := ReadMessage(c.conn)
		if err != nil {
			return fmt.Errorf("reading: %w", err)
		}
		c.log.Debug("vscard <-", "msg", m)
		switch m.Type {
		case MsgInit:
			// QEMU sends one unprompted when the device is realized
			// with the chardev connected, and one in reply to ours.
		case MsgError:
			code, err := ParseError(m.Payload)
			if err != nil {
				return err
			}
			if addAck != nil {
				// The ReaderAdd acknowledgement carries the reader id.
				if code != CodeSuccess {
					return &RefusedError{Request: MsgReaderAdd, Code: code}
				}
				c.mu.Lock()
				c.readerID = m.ReaderID
				c.pending = c.pending[1:]
				c.mu.Unlock()
				addAck = nil
				close(c.ready)
				continue
			}
			if !c.acknowledge(code) {
				c.log.Warn("vscard: unexpected Error message", "code", code)
			}
		case MsgAPDU:
			if err := c.answer(m.Payload); err != nil {
				return err
			}
		case MsgFlush:
			if err := c.write(MsgFlushComplete, c.reader(), nil); err != nil {
				return fmt.Errorf("sending FlushComplete: %w", err)
			}
		default:
			c.log.Warn("vscard: ignoring unexpected message", "msg", m)
		}
	}
}

// awaitInit reads until QEMU's Init arrives.
func (c *Client) awaitInit() error {
	for {
		m, err := ReadMessage(c.conn)
		if err != nil {
			return fmt.Errorf("awaiting Init: %w", err)
		}
		c.log.Debug("vscard <-", "msg", m)
		switch m.Type {
		case MsgInit:
			in, err := ParseInit(m.Payload)
			if err != nil {
				return err
			}
			if in.Version != Version {
				c.log.Warn("vscard: host speaks another version", "version", in.Version)
			}
			return nil
		case MsgError:
			code, err := ParseError(m.Payload)
			if err != nil {
				return err
			}
			return &RefusedError{Request: MsgInit, Code: code}
		default:
			return fmt.Errorf("%w: %v before Init", ErrMalformed, m.Type)
		}
	}
}

// answer runs one command through the card and sends the response; with
// no card it sends Error, which QEMU turns into an empty reply.
func (c *Client) answer(command []byte) error {
	c.mu.Lock()
	card, id := c.card, c.readerID
	c.mu.Unlock()
	if card == nil {
		c.log.Warn("vscard: APDU without a card")
		return c.write(MsgError, id, ErrorPayload(CodeGeneral))
	}
	resp := card.Process(command)
	if resp == nil {
		return c.write(MsgError, id, ErrorPayload(CodeGeneral))
	}
	if len(resp) > MaxPayloadLen {
		c.log.Warn("vscard: response too large for VSCard", "len", len(resp))
		return c.write(MsgError, id, ErrorPayload(CodeGeneral))
	}
	if err := c.write(MsgAPDU, id, resp); err != nil {
		return fmt.Errorf("sending APDU response: %w", err)
	}
	return nil
}

// Insert puts card into the reader: it sends card's ATR and waits for
// QEMU's acknowledgement. From then on APDUs go to card.
func (c *Client) Insert(ctx context.Context, card Card) error {
	atr := card.ATR()
	if len(atr) == 0 || len(atr) > MaxATRLen {
		return fmt.Errorf("%w: %d bytes", ErrBadATR, len(atr))
	}
	if err := c.await(ctx, c.ready); err != nil {
		return fmt.Errorf("inserting card: %w", err)
	}
	c.mu.Lock()
	prev := c.card
	c.card = card
	c.mu.Unlock()
	if err := c.do(ctx, MsgATR, atr); err != nil {
		c.mu.Lock()
		c.card = prev
		c.mu.Unlock()
		return fmt.Errorf("inserting card: %w", err)
	}
	return nil
}

// Remove takes the card out of the reader (CardRemove) and waits for
// QEMU's acknowledgement.
func (c *Client) Remove(ctx context.Context) error {
	if err := c.await(ctx, c.ready); err != nil {
		return fmt.Errorf("removing card: %w", err)
	}
	if err := c.do(ctx, MsgCardRemove, nil); err != nil {
		return fmt.Errorf("removing card: %w", err)
	}
	c.mu.Lock()
	c.card = nil
	c.mu.Unlock()
	return nil
}

// do sends a request and waits for its acknowledgement.
func (c *Client) do(ctx context.Context, t MsgType, payload []byte) error {
	ack, err := c.request(t, c.reader(), payload)
	if err != nil {
		return err
	}
	select {
	case r := <-ack:
		if r.err != nil {
			return r.err
		}
		if r.code != CodeSuccess {
			return &RefusedError{Request: t, Code: r.code}
		}
		return nil
	case <-ctx.Done():
		// The acknowledgement may still come; ack is buffered, so Run
		// never blocks on it.
		return ctx.Err()
	}
}

// request queues an acknowledgement slot and sends the message. The slot is
// queued first so that a fast reply always finds it.
func (c *Client) request(t MsgType, reader uint32, payload []byte) (chan ackReply, error) {
	ack := make(chan ackReply, 1)
	c.mu.Lock()
	if c.closed {
		err := c.runErr
		c.mu.Unlock()
		return nil, errors.Join(ErrClosed, err)
	}
	c.pending = append(c.pending, ack)
	c.mu.Unlock()
	if err := c.write(t, reader, payload); err != nil {
		// Run sees the broken connection too and fails the slot.
		return nil, fmt.Errorf("sending %v: %w", t, err)
	}
	return ack, nil
}

// acknowledge hands an Error message to the oldest pending request.
func (c *Client) acknowledge(code ErrorCode) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.pending) == 0 {
		return false
	}
	c.pending[0] <- ackReply{code: code}
	c.pending = c.pending[1:]
	return true
}

func (c *Client) shutdown(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	c.runErr = err
	for _, p := range c.pending {
		p <- ackReply{err: errors.Join(ErrClosed, err)}
	}
	c.pending = nil
}

func (c *Client) reader() uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.readerID
}

func (c *Client) await(ctx context.Context, ch <-chan struct{}) error {
	select {
	case <-ch:
		return nil
	case <-c.done:
		c.mu.Lock()
		defer c.mu.Unlock()
		return errors.Join(ErrClosed, c.runErr)
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *Client) write(t MsgType, reader uint32, payload []byte) error {
	b, err := Message{Type: t, ReaderID: reader, Payload: payload}.Append(nil)
	if err != nil {
		return err
	}
	c.log.Debug("vscard ->", "msg", Message{Type: t, ReaderID: reader, Payload: payload})
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err = c.conn.Write(b)
	return err
}
