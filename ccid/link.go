package ccid

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/ccid/internal/usbio"
)

// Timing of the bulk pipes. Variables so tests can shorten them.
var (
	// bulkInPoll is how long one bulk-in read waits before it is
	// re-issued (libccid's reader thread loops on 5 s reads).
	bulkInPoll = 5 * time.Second
	// writeTimeout bounds one bulk-out message.
	writeTimeout = 5 * time.Second
	// abortTimeout bounds the Abort procedure after a command timed out.
	abortTimeout = 2 * time.Second
	// controlTimeout bounds one control request.
	controlTimeout = 2 * time.Second
)

const (
	// maxStale is how many stale or duplicate frames one command may
	// see before it fails (libccid's ReadUSB gives up after 10).
	maxStale = 10
	// routeDepth is the per-slot response queue: a command's final
	// response plus the time extensions before it.
	routeDepth = 4
	// maxResponse bounds a response the driver accepts: an extended
	// response APDU (65536 data bytes and SW) plus header.
	maxResponse = HeaderLen + 65536 + 2
	// CCID class requests on the control pipe.
	reqAbort         = 0x01
	reqGetClocks     = 0x02
	reqGetDataRates  = 0x03
	reqTypeClassOut  = 0x21 // host to device, class, interface
	reqTypeClassIn   = 0xA1 // device to host, class, interface
	scmBogusMaxMsg   = 263  // SCM readers announce 263 but take 270
	scmMaxMsgCorrect = 270
)

// link is one claimed CCID interface. It owns the goroutine that reads
// bulk-in and routes every frame by bSlot to the command waiting for it,
// and the bSeq counter shared by all slots of the interface.
//
// Ownership: readLoop is the only reader of conn's bulk-in; wmu
// serialises bulk-out writes together with bSeq allocation so sequence
// numbers reach the reader in order; each route is guarded by its mutex
// and awaited by at most one command (the slot layer holds the slot's
// lock for the whole command).
type link struct {
	name  string // reader name, for errors
	iface int    // bInterfaceNumber, for class requests
	desc  Descriptor
	conn  usbio.Conn
	log   *slog.Logger
	rates []uint32 // supported data rates (GET_DATA_RATES), nil when unknown

	busy chan struct{} // bMaxCCIDBusySlots tokens

	wmu  sync.Mutex // guards seq and wbuf, serialises bulk-out
	seq  byte
	wbuf []byte

	routes []route // one per slot, fixed size

	ctx    context.Context // lifetime of the link; cancelled by close/fail
	cancel context.CancelFunc
	done   chan struct{} // closed when readLoop has returned

	errMu sync.Mutex
	err   error // why the link stopped; guarded by errMu
}

// route delivers the responses of one slot's outstanding command.
type route struct {
	mu    sync.Mutex
	want  int // awaited bSeq, -1 when no command is outstanding
	stale int // frames dropped while awaiting want
	ch    chan frame
	// timer times the outstanding command; used only by the command's
	// goroutine (the slot lock's holder), reused to spare an allocation.
	timer *time.Timer
}

// frame is one routed bulk-in message; err is set for a message that
// could not be parsed (its header fields are still in msg).
type frame struct {
	msg Message
	err error
}

// newLink starts the bulk-in goroutine of a claimed interface.
func newLink(name string, ci ccidInterface, conn usbio.Conn, log *slog.Logger) *link {
	ctx, cancel := context.WithCancel(context.Background())
	l := &link{
		name: name, iface: ci.Number, desc: ci.Desc, conn: conn, log: log,
		busy:   make(chan struct{}, ci.Desc.BusySlots()),
		routes: make([]route, ci.Desc.Slots()),
		ctx:    ctx, cancel: cancel, done: make(chan struct{}),
	}
	for i := range l.routes {
		l.routes[i].want = -1
		l.routes[i].ch = make(chan frame, routeDepth)
		l.routes[i].timer = time.NewTimer(time.Hour)
		l.routes[i].timer.Stop()
	}
	bufLen := int(ci.Desc.MaxMessageLength)
	if bufLen < maxResponse {
		bufLen = maxResponse
	}
	bufLen = (bufLen + 511) &^ 511 // whole packets, so a long message never overflows
	go l.readLoop(make([]byte, bufLen))
	return l
}

// maxCommand is the largest message the host may send.
func (l *link) maxCommand() int {
	n := int(l.desc.MaxMessageLength)
	if n == scmBogusMaxMsg {
		n = scmMaxMsgCorrect
	}
	if n < HeaderLen+5 {
		n = HeaderLen + 5 // a broken descriptor must not stop short commands
	}
	return n
}

// readLoop reads bulk-in until the link stops.
func (l *link) readLoop(buf []byte) {
	defer close(l.done)
	for {
		n, err := l.conn.BulkIn(l.ctx, buf, bulkInPoll)
		if n > 0 {
			l.deliver(buf[:n])
		}
		if err == nil || (errors.Is(err, usbio.ErrTimeout) && l.ctx.Err() == nil) {
			continue
		}
		switch {
		case l.ctx.Err() != nil:
			err = fmt.Errorf("reading bulk-in: %w", l.ctx.Err())
		case errors.Is(err, usbio.ErrStall):
			// A halted endpoint stays halted: only a USB reset (the
			// hung-reader path) brings the reader back. Found by the
			// reader lab (test/gadget, TestGadgetStall): treated as
			// gone, the reader was reclaimed and failed again at once,
			// for ever.
			err = fmt.Errorf("%w: bulk-in endpoint halted: %w", ErrReaderHung, err)
		default:
			err = fmt.Errorf("reading bulk-in: %w", err)
		}
		l.fail(err)
		return
	}
}

// deliver routes one bulk-in transfer.
func (l *link) deliver(b []byte) {
	m, perr := ParseMessage(b)
	if perr != nil {
		if len(b) < HeaderLen {
			l.log.Warn("ccid: dropping runt bulk-in transfer", "reader", l.name, "bytes", len(b))
			return
		}
		m = Message{Type: MessageType(b[0]), Slot: b[5], Seq: b[6]}
		copy(m.Param[:], b[7:HeaderLen])
	}
	if int(m.Slot) >= len(l.routes) {
		l.log.Warn("ccid: dropping frame for a slot the reader does not have", "reader", l.name, "frame", m.String())
		return
	}
	r := &l.routes[m.Slot]
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.want != int(m.Seq) {
		r.stale++
		l.log.Debug("ccid: dropping stale frame", "reader", l.name, "frame", m.String(), "want", r.want)
		if r.want >= 0 && r.stale == maxStale+1 {
			l.push(r, frame{err: fmt.Errorf("%w: more than %d stale or duplicate frames while waiting for seq %d",
				ErrFrame, maxStale, r.want)})
		}
		return
	}
	if perr == nil {
		m.Data = append([]byte(nil), m.Data...) // buf is reused
	}
	l.push(r, frame{msg: m, err: perr})
}

// push queues f on r without blocking; r.mu is held.
func (l *link) push(r *route, f frame) {
	select {
	case r.ch <- f:
	default:
		l.log.Warn("ccid: response queue full, dropping frame", "reader", l.name, "frame", f.msg.String())
	}
}

// fail stops the link with err (the first error wins).
func (l *link) fail(err error) {
	l.errMu.Lock()
	if l.err == nil {
		l.err = err
	}
	l.errMu.Unlock()
	l.cancel()
}

// close stops the link, releases the interface and waits for readLoop.
func (l *link) close() error {
	l.fail(ErrReaderGone)
	err := l.conn.Close()
	<-l.done
	return err
}

// gone returns the error for commands on a stopped link.
func (l *link) gone() error {
	l.errMu.Lock()
	err := l.err
	l.errMu.Unlock()
	if errors.Is(err, ErrReaderHung) {
		return fmt.Errorf("ccid: %s: %w: %w", l.name, err, card.ErrRemoved)
	}
	return fmt.Errorf("ccid: %s: %w (%v): %w", l.name, ErrReaderGone, err, card.ErrRemoved)
}

// begin allocates the next bSeq for slot, arms its route and writes m.
// The caller holds the slot's lock and a busy token.
func (l *link) begin(slot int, m Message) (byte, error) {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	seq := l.arm(slot)
	m.Slot, m.Seq = byte(slot), seq
	l.wbuf = AppendMessage(l.wbuf[:0], m)
	return seq, l.write(l.wbuf)
}

// arm allocates a bSeq and points slot's route at it, dropping anything
// left over from the previous command. wmu is held.
func (l *link) arm(slot int) byte {
	seq := l.seq
	l.seq++
	r := &l.routes[slot]
	r.mu.Lock()
	r.want, r.stale = int(seq), 0
	for len(r.ch) > 0 {
		<-r.ch
	}
	r.mu.Unlock()
	return seq
}

func (l *link) write(msg []byte) error {
	if err := l.conn.BulkOut(l.ctx, msg, writeTimeout); err != nil {
		if l.ctx.Err() != nil {
			return l.gone()
		}
		if errors.Is(err, usbio.ErrNoDevice) {
			l.fail(err)
			return l.gone()
		}
		if errors.Is(err, usbio.ErrStall) { // see readLoop
			l.fail(fmt.Errorf("%w: bulk-out endpoint halted: %w", ErrReaderHung, err))
			return l.gone()
		}
		return fmt.Errorf("ccid: %s: writing %v: %w", l.name, MessageType(msg[0]), err)
	}
	return nil
}

// disarm marks slot idle.
func (l *link) disarm(slot int) {
	r := &l.routes[slot]
	r.mu.Lock()
	r.want = -1
	r.mu.Unlock()
}

// acquire takes a busy token.
func (l *link) acquire(ctx context.Context) error {
	select {
	case l.busy <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-l.done:
		return l.gone()
	}
}

func (l *link) release() { <-l.busy }

// transact sends m to slot and waits for its response: timeout per
// wait, multiplied by bError on every time extension request. On
// timeout or when ctx is done the command is aborted; an abort that
// gets no answer stops the link with ErrReaderHung. The caller holds
// the slot's lock.
func (l *link) transact(ctx context.Context, slot int, m Message, timeout time.Duration) (Message, error) {
	if err := l.acquire(ctx); err != nil {
		return Message{}, err
	}
	defer l.release()
	want, _ := m.Type.Response()
	seq, err := l.begin(slot, m)
	if err != nil {
		l.disarm(slot)
		return Message{}, err
	}
	r := &l.routes[slot]
	timer := r.timer
	timer.Reset(timeout)
	defer timer.Stop()
	for {
		select {
		case f := <-r.ch:
			if f.err != nil {
				l.disarm(slot)
				return Message{}, fmt.Errorf("ccid: %s slot %d: %v: %w", l.name, slot, m.Type, f.err)
			}
			if f.msg.TimeExtension() {
				mult := time.Duration(f.msg.ErrorCode())
				if mult == 0 {
					mult = 1
				}
				l.log.Debug("ccid: time extension", "reader", l.name, "slot", slot, "multiplier", int(mult))
				timer.Reset(timeout * mult)
				continue
			}
			l.disarm(slot)
			if f.msg.Type != want && !f.msg.Failed() {
				return Message{}, fmt.Errorf("ccid: %s slot %d: %w: %v answered with %v",
					l.name, slot, ErrFrame, m.Type, f.msg.Type)
			}
			return f.msg, nil
		case <-timer.C:
			aerr := l.abort(slot)
			return Message{}, fmt.Errorf("ccid: %s slot %d: %v seq %d: %w after %v%s: %w",
				l.name, slot, m.Type, seq, ErrTimeout, timeout, abortNote(aerr), card.ErrMute)
		case <-ctx.Done():
			aerr := l.abort(slot)
			return Message{}, fmt.Errorf("ccid: %s slot %d: %v seq %d%s: %w", l.name, slot, m.Type, seq, abortNote(aerr), ctx.Err())
		case <-l.done:
			l.disarm(slot)
			return Message{}, l.gone()
		}
	}
}

func abortNote(err error) string {
	if err == nil {
		return " (aborted)"
	}
	return fmt.Sprintf(" (abort failed: %v)", err)
}

// abort runs the CCID Abort procedure for slot (CCID rev 1.1 §5.3.1):
// the ABORT class request and PC_to_RDR_Abort with the same bSlot and
// bSeq, then waits for the SlotStatus answering the Abort; the aborted
// command's late answer, if any, is dropped as stale. Readers that stall
// the class request (QEMU) still get the bulk Abort. When nothing
// answers, the link is stopped with ErrReaderHung so the driver reopens
// the reader.
func (l *link) abort(slot int) error {
	if l.ctx.Err() != nil {
		l.disarm(slot)
		return l.gone()
	}
	ctx, cancel := context.WithTimeout(l.ctx, abortTimeout)
	defer cancel()
	l.wmu.Lock()
	seq := l.arm(slot)
	if _, err := l.conn.Control(ctx, reqTypeClassOut, reqAbort, uint16(seq)<<8|uint16(slot), uint16(l.iface), nil); err != nil {
		l.log.Debug("ccid: ABORT class request failed", "reader", l.name, "slot", slot, "err", err)
	}
	msg := AppendMessage(l.wbuf[:0], Message{Type: PCToRDRAbort, Slot: byte(slot), Seq: seq})
	l.wbuf = msg
	werr := l.write(msg)
	l.wmu.Unlock()
	defer l.disarm(slot)
	if werr == nil && l.awaitAbort(ctx, slot) {
		return nil
	}
	if l.ctx.Err() != nil {
		return l.gone()
	}
	err := fmt.Errorf("%w: no answer to Abort on slot %d", ErrReaderHung, slot)
	l.log.Warn("ccid: reader hung, dropping it", "reader", l.name, "slot", slot)
	l.fail(err)
	return err
}

// awaitAbort waits for the answer to PC_to_RDR_Abort.
func (l *link) awaitAbort(ctx context.Context, slot int) bool {
	r := &l.routes[slot]
	for {
		select {
		case f := <-r.ch:
			if f.err == nil && !f.msg.TimeExtension() {
				return true
			}
		case <-ctx.Done():
			return false
		}
	}
}

// control does a class request on the interface.
func (l *link) control(reqType, req uint8, value uint16, data []byte) (int, error) {
	ctx, cancel := context.WithTimeout(l.ctx, controlTimeout)
	defer cancel()
	return l.conn.Control(ctx, reqType, req, value, uint16(l.iface), data)
}

// fetchDataRates asks for the supported data rates when the descriptor
// announces a list; readers that stall the request keep rates nil.
func (l *link) fetchDataRates() {
	n := int(l.desc.NumDataRates)
	if n == 0 {
		return
	}
	buf := make([]byte, 4*n)
	got, err := l.control(reqTypeClassIn, reqGetDataRates, 0, buf)
	if err != nil {
		l.log.Debug("ccid: GET_DATA_RATES failed", "reader", l.name, "err", err)
		return
	}
	for i := 0; i+4 <= got; i += 4 {
		r := uint32(buf[i]) | uint32(buf[i+1])<<8 | uint32(buf[i+2])<<16 | uint32(buf[i+3])<<24
		if r != 0 {
			l.rates = append(l.rates, r)
		}
	}
}
