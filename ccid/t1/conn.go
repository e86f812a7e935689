package t1

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
)

// Exchanger sends one block (NAD PCB LEN INF EDC) to the card and returns
// the card's block: one CCID PC_to_RDR_XfrBlock round trip.
//
// bwiMultiplier is the block waiting time multiplier for this exchange
// (CCID bBWI): the value of the card's S(WTX request) when block is the
// S(WTX response), else 0.
//
// block is only valid during the call; the returned slice is read before
// the next call and not kept. When the reader delivers no usable block,
// Exchange returns an error wrapping ErrNoBlock (no answer within BWT) or
// ErrParity; the protocol recovers from those. Any other error ends the
// Transmit, as does ctx being done.
type Exchanger interface {
	Exchange(ctx context.Context, block []byte, bwiMultiplier byte) ([]byte, error)
}

// Config holds the T=1 parameters of one card, from its ATR.
type Config struct {
	// IFSC is the largest information field the card accepts (ATR TA3 for
	// T=1). 0 means DefaultIFSC; values above MaxINF are clamped.
	IFSC int
	// IFSD is the largest information field the host accepts from the
	// card. 0 means DefaultIFSD (254); values above MaxINF are clamped. The
	// card assumes 32 until NegotiateIFSD tells it otherwise.
	IFSD int
	// CRC selects the two-byte CRC instead of the LRC (first TC for T=1,
	// bit 0).
	CRC bool
	// NAD is the node address byte the host sends; the card answers with
	// its nibbles swapped. Normally 0.
	NAD byte
	// MaxRetries is how many invalid blocks in a row are answered with
	// R-blocks before the host resynchronises. 0 means DefaultMaxRetries.
	MaxRetries int
	// Logger receives debug records of errors and retransmissions. nil
	// discards them.
	Logger *slog.Logger
}

// Conn is the host end of a T=1 connection to one card. It is not safe for
// concurrent use: the goroutine that owns the card handle calls it.
type Conn struct {
	x       Exchanger
	cfg     Config // normalised
	wantNAD byte   // NAD of the card's blocks
	log     *slog.Logger

	// Protocol state, owned by the calling goroutine.
	ns, nr     byte   // N(S) of the host's next I-block; N(S) expected from the card
	ifsc       int    // largest INF the card accepts now
	ifsd       int    // largest INF the host accepts now
	needResync bool   // a call ended mid-exchange; resynchronise before the next
	txBuf      []byte // the block being sent, rebuilt in place
	rsp        []byte // the response being reassembled, reused across calls
}

// New returns the host end of a T=1 connection that sends its blocks
// through x. The sequence numbers start at 0, as after an ATR.
func New(x Exchanger, cfg Config) *Conn {
	cfg.IFSC = clampIFS(cfg.IFSC, DefaultIFSC)
	cfg.IFSD = clampIFS(cfg.IFSD, DefaultIFSD)
	if cfg.MaxRetries <= 0 {
		cfg.MaxRetries = DefaultMaxRetries
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Conn{
		x:       x,
		cfg:     cfg,
		wantNAD: swapNibbles(cfg.NAD),
		log:     log,
		ifsc:    cfg.IFSC,
		ifsd:    cfg.IFSD,
		txBuf:   make([]byte, 0, maxBlock),
	}
}

func clampIFS(v, def int) int {
	switch {
	case v <= 0:
		return def
	case v > MaxINF:
		return MaxINF
	}
	return v
}

// transfer is the state of one Transmit.
type transfer struct {
	apdu    []byte
	off     int    // bytes of apdu the card has acknowledged
	n       int    // INF length of the I-block in flight
	sending bool   // the card has not begun its answer yet
	tx      []byte // the block to send next
	bwi     byte   // BWT multiplier to send with tx
	lastR   bool   // tx is an R-block
	errs    int    // invalid blocks and retransmissions in a row
	idle    int    // blocks without progress in a row
	lastErr error  // why errs last went up
	done    bool
}

// more reports whether the I-block in flight is chained.
func (t *transfer) more() bool { return t.off+t.n < len(t.apdu) }

// Transmit sends one command APDU and returns the card's complete
// response, chaining both ways as IFSC and IFSD require.
//
// If the card keeps sending invalid blocks, Transmit resynchronises and
// returns an error matching ErrProtocol (or ErrResyncFailed); it does not
// send the command again, since the card may have executed it. If the
// previous call ended mid-exchange (ctx done, Exchanger error, abort),
// Transmit resynchronises first.
func (c *Conn) Transmit(ctx context.Context, apdu []byte) ([]byte, error) {
	if len(apdu) == 0 || len(apdu) > MaxAPDU {
		return nil, fmt.Errorf("t1: sending %d-byte APDU: %w", len(apdu), ErrInvalidArgument)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("t1: sending APDU: %w", err)
	}
	if c.needResync {
		if err := c.resync(ctx); err != nil {
			return nil, fmt.Errorf("t1: sending APDU: %w", err)
		}
	}
	rsp, err := c.transceive(ctx, apdu)
	if err != nil {
		return nil, fmt.Errorf("t1: sending APDU: %w", err)
	}
	return rsp, nil
}

func (c *Conn) transceive(ctx context.Context, apdu []byte) ([]byte, error) {
	t := transfer{apdu: apdu, sending: true}
	c.rsp = c.rsp[:0]
	c.iBlock(&t)
	for {
		rx, err := c.exchange(ctx, t.tx, t.bwi)
		if err == nil {
			err = c.onBlock(ctx, &t, rx)
		}
		if err != nil {
			var be *BlockError
			if !errors.As(err, &be) {
				c.needResync = true
				return nil, err
			}
			t.errs++
			t.lastErr = err
			c.log.Debug("t1: invalid block", "error", err, "count", t.errs)
			// Rule 7.1: answer with an R-block naming the I-block expected
			// next; rule 7.2: if that is what was sent last, send it again.
			if !t.lastR {
				t.tx = c.build(pcbR|c.nr<<4|be.rBits(), nil)
				t.bwi, t.lastR = 0, true
			}
		}
		if t.done {
			out := make([]byte, len(c.rsp))
			copy(out, c.rsp)
			return out, nil
		}
		if t.errs > c.cfg.MaxRetries {
			return nil, c.giveUp(ctx, &t)
		}
	}
}

// giveUp resynchronises after too many errors in a row (rule 7.4.2).
func (c *Conn) giveUp(ctx context.Context, t *transfer) error {
	c.log.Debug("t1: too many errors, resynchronising", "count", t.errs, "last", t.lastErr)
	if err := c.resync(ctx); err != nil {
		return fmt.Errorf("after %d invalid blocks in a row (last: %v): %w", t.errs, t.lastErr, err)
	}
	return fmt.Errorf("resynchronised after %d invalid blocks in a row: %w", t.errs, t.lastErr)
}

// exchange runs one round trip. Missing and garbled blocks come back as
// *BlockError; ctx and other reader errors as plain errors.
func (c *Conn) exchange(ctx context.Context, tx []byte, bwi byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("exchanging %v: %w", describePCB(tx[1]), err)
	}
	rx, err := c.x.Exchange(ctx, tx, bwi)
	if err == nil {
		return rx, nil
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		if errors.Is(err, ctxErr) {
			return nil, fmt.Errorf("exchanging %v: %w", describePCB(tx[1]), err)
		}
		return nil, fmt.Errorf("exchanging %v: %w: %w", describePCB(tx[1]), ctxErr, err)
	}
	switch {
	case errors.Is(err, ErrParity):
		return nil, &BlockError{Reason: "answer to " + describePCB(tx[1]), EDC: true, Err: err}
	case errors.Is(err, ErrNoBlock):
		return nil, &BlockError{Reason: "answer to " + describePCB(tx[1]), Err: err}
	}
	return nil, fmt.Errorf("exchanging %v: %w", describePCB(tx[1]), err)
}

// build makes the next block to send in c.txBuf.
func (c *Conn) build(pcb byte, inf []byte) []byte {
	c.txBuf = appendBlock(c.txBuf[:0], c.cfg.NAD, pcb, inf, c.cfg.CRC)
	return c.txBuf
}

// iBlock makes t.tx the I-block that carries apdu from the acknowledged
// offset on, cut to the current IFSC.
func (c *Conn) iBlock(t *transfer) {
	rest := t.apdu[t.off:]
	t.n = min(len(rest), c.ifsc)
	pcb := c.ns << 6
	if t.n < len(rest) {
		pcb |= iMore
	}
	t.tx = c.build(pcb, rest[:t.n])
	t.bwi, t.lastR = 0, false
}

func (c *Conn) parse(rx []byte) (block, error) {
	b, err := parseBlock(rx, c.cfg.CRC, c.ifsd)
	if err == nil && b.nad != c.wantNAD {
		return block{}, blockErrorf(false, "%v with NAD 0x%02X, expected 0x%02X", b, b.nad, c.wantNAD)
	}
	return b, err
}

// onBlock advances t with the card's block rx. It returns a *BlockError
// for a block to answer with an R-block, or another error to end the call.
func (c *Conn) onBlock(ctx context.Context, t *transfer, rx []byte) error {
	b, err := c.parse(rx)
	if err != nil {
		return err
	}
	switch b.kind() {
	case kindI:
		return c.onI(t, b)
	case kindR:
		return c.onR(t, b)
	}
	return c.onS(ctx, t, b)
}

func (c *Conn) onI(t *transfer, b block) error {
	if t.sending && t.more() {
		return blockErrorf(false, "%v before the card acknowledged chained I-block N(S)=%d", b, c.ns)
	}
	if b.seq() != c.nr {
		return blockErrorf(false, "%v out of sequence, expected N(S)=%d", b, c.nr)
	}
	if len(c.rsp)+len(b.inf) > MaxResponse {
		return fmt.Errorf("%w: response longer than %d bytes", ErrProtocol, MaxResponse)
	}
	if t.sending { // the card's first I-block acknowledges the last of ours
		c.ns ^= 1
		t.sending = false
	}
	c.rsp = append(c.rsp, b.inf...)
	c.nr ^= 1
	t.errs = 0
	if !b.more() {
		t.done = true
		return nil
	}
	if len(b.inf) > 0 {
		t.idle = 0
	} else if t.idle++; t.idle > maxIdle {
		return fmt.Errorf("%w: %d empty chained I-blocks", ErrProtocol, t.idle)
	}
	t.tx = c.build(pcbR|c.nr<<4, nil) // rule 5: acknowledge the chained block
	t.bwi, t.lastR = 0, true
	return nil
}

func (c *Conn) onR(t *transfer, b block) error {
	switch {
	case !t.sending:
		// The card is answering, so this R-block means it could not read
		// what was sent last (an acknowledgement or an S-response): send
		// it again.
		t.errs++
		t.lastErr = blockErrorf(false, "card sent %v instead of its next I-block", b)
	case b.seq() == c.ns:
		// The card asks for the I-block in flight again: it was lost or
		// damaged on the way.
		t.errs++
		t.lastErr = blockErrorf(false, "card sent %v asking for I-block N(S)=%d again", b, c.ns)
		c.iBlock(t)
	case !t.more():
		return blockErrorf(false, "card acknowledged the last I-block of the command with %v", b)
	default: // acknowledgement of a chained block: send the next one
		t.off += t.n
		c.ns ^= 1
		t.errs, t.idle = 0, 0
		c.iBlock(t)
	}
	return nil
}

func (c *Conn) onS(ctx context.Context, t *transfer, b block) error {
	if b.pcb&sResponse != 0 {
		return blockErrorf(false, "unsolicited %v", b)
	}
	var inf [1]byte
	switch b.pcb & sTypeMask {
	case sIFS: // rule 4: adopt the card's new IFSC
		inf[0] = b.inf[0]
		c.ifsc = int(inf[0])
		t.tx = c.build(pcbS|sResponse|sIFS, inf[:])
		t.bwi, t.lastR = 0, false
	case sWTX: // rule 3: grant the extension for the card's next block
		inf[0] = b.inf[0]
		t.tx = c.build(pcbS|sResponse|sWTX, inf[:])
		t.bwi, t.lastR = inf[0], false
	case sAbort: // rule 9
		c.log.Debug("t1: card aborted the chain")
		tx := c.build(pcbS|sResponse|sAbort, nil)
		if _, err := c.exchange(ctx, tx, 0); err != nil {
			c.log.Debug("t1: sending S(ABORT response)", "error", err)
		}
		return fmt.Errorf("%w after %d of %d command bytes", ErrAborted, t.off, len(t.apdu))
	default: // only the interface device may send S(RESYNCH request)
		return blockErrorf(false, "card sent %v", b)
	}
	if t.idle++; t.idle > maxIdle {
		return fmt.Errorf("%w: %d S-block requests without progress", ErrProtocol, t.idle)
	}
	return nil
}

// Resync sends S(RESYNCH request), up to three times, until the card
// answers S(RESYNCH response); then both sequence numbers are 0 and IFSC is
// back to its configured value (the card forgets a negotiated IFSD too).
func (c *Conn) Resync(ctx context.Context) error {
	if err := c.resync(ctx); err != nil {
		return fmt.Errorf("t1: %w", err)
	}
	return nil
}

func (c *Conn) resync(ctx context.Context) error {
	c.needResync = true
	var last error
	for range resyncAttempts {
		rx, err := c.exchange(ctx, c.build(pcbS|sResynch, nil), 0)
		if err == nil {
			var b block
			if b, err = c.parse(rx); err == nil && b.pcb != pcbS|sResponse|sResynch {
				err = blockErrorf(false, "%v instead of S(RESYNCH response)", b)
			}
		}
		if err == nil {
			c.ns, c.nr = 0, 0
			c.ifsc = c.cfg.IFSC
			c.needResync = false
			return nil
		}
		var be *BlockError
		if !errors.As(err, &be) {
			return fmt.Errorf("%w: %w", ErrResyncFailed, err)
		}
		c.log.Debug("t1: resynchronising", "error", err)
		last = err
	}
	return fmt.Errorf("%w after %d attempts: %w", ErrResyncFailed, resyncAttempts, last)
}

// NegotiateIFSD tells the card, with S(IFS request), that the host accepts
// information fields of up to ifsd bytes (1..254), and from then on accepts
// no more. The request is sent again, up to MaxRetries times, until the
// card echoes it in S(IFS response).
func (c *Conn) NegotiateIFSD(ctx context.Context, ifsd int) error {
	if ifsd < 1 || ifsd > MaxINF {
		return fmt.Errorf("t1: negotiating IFSD %d: %w", ifsd, ErrInvalidArgument)
	}
	if c.needResync {
		if err := c.resync(ctx); err != nil {
			return fmt.Errorf("t1: negotiating IFSD %d: %w", ifsd, err)
		}
	}
	inf := [1]byte{byte(ifsd)}
	var last error
	for range c.cfg.MaxRetries + 1 {
		rx, err := c.exchange(ctx, c.build(pcbS|sIFS, inf[:]), 0)
		if err == nil {
			var b block
			if b, err = c.parse(rx); err == nil && (b.pcb != pcbS|sResponse|sIFS || b.inf[0] != inf[0]) {
				err = blockErrorf(false, "%v instead of S(IFS response) with %d", b, ifsd)
			}
		}
		if err == nil {
			c.ifsd = ifsd
			return nil
		}
		var be *BlockError
		if !errors.As(err, &be) {
			c.needResync = true
			return fmt.Errorf("t1: negotiating IFSD %d: %w", ifsd, err)
		}
		c.log.Debug("t1: negotiating IFSD", "error", err)
		last = err
	}
	c.needResync = true
	return fmt.Errorf("t1: negotiating IFSD %d: %d attempts failed: %w", ifsd, c.cfg.MaxRetries+1, last)
}
