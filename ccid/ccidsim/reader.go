package ccidsim

import (
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/wsrc-go/wsrc/ccid"
	"github.com/wsrc-go/wsrc/ccid/internal/usbio"
)

// Stats counts what a simulated reader has seen. Slices are copies.
type Stats struct {
	// Messages counts bulk-out messages by type.
	Messages map[ccid.MessageType]int
	// PPS holds every PPS request the card got through the TPDU pipe.
	PPS [][]byte
	// SetParameters holds bProtocolNum followed by the protocol data of
	// every SetParameters.
	SetParameters [][]byte
	// Voltages holds bPowerSelect of every IccPowerOn.
	Voltages []byte
	// ControlAborts counts ABORT class requests; Aborts counts
	// PC_to_RDR_Abort messages.
	ControlAborts, Aborts int
	// MaxBusy is the most slots ever busy at once; SlotBusy counts
	// commands refused with CMD_SLOT_BUSY.
	MaxBusy, SlotBusy int
	// ChainedBlocks counts extended-APDU blocks with wLevelParameter ≠ 0
	// and response blocks with bChainParameter ≠ 0.
	ChainedBlocks int
	// Resets counts USB port resets.
	Resets int
	// BWI holds every non-zero bBWI of an XfrBlock (block waiting time
	// extensions the host passed on after S(WTX)).
	BWI []byte
}

// Reader is one simulated reader device: its slots, its fault
// injection and its counters. Methods are safe for concurrent use.
type Reader struct {
	bus   *Bus
	p     Profile
	id    string
	port  string
	gone  chan struct{} // closed on unplug
	slots []*Slot       // reader-wide order: interface by interface

	mu sync.Mutex
	// Guarded by mu.
	unplugged        bool
	opens            int
	conns            map[int]*conn // claimed interfaces
	claimedElsewhere bool
	accessDenied     bool
	hangNext         int  // commands left to swallow
	hangAbort        bool // swallow the Abort too
	hung             []pendingCmd
	staleNext        bool
	wrongSeqNext     bool
	lastSent         []byte
	busy             int
	stats            Stats
	timing           bool          // SetCardTiming
	stalled          bool          // StallBulkIn, until a USB reset
	stallC           chan struct{} // closed while stalled
}

// pendingCmd is a swallowed command.
type pendingCmd struct {
	c         *conn
	typ       ccid.MessageType
	slot, seq byte
}

func newReader(b *Bus, p Profile, id, port string) *Reader {
	r := &Reader{bus: b, p: p, id: id, port: port, gone: make(chan struct{}), conns: map[int]*conn{}, stallC: make(chan struct{})}
	r.stats.Messages = map[ccid.MessageType]int{}
	for i := 0; i < p.interfaces(); i++ {
		for j := 0; j < p.Descriptor.Slots(); j++ {
			r.slots = append(r.slots, &Slot{r: r, iface: i, bSlot: j, index: len(r.slots)})
		}
	}
	return r
}

// Profile returns the reader's profile.
func (r *Reader) Profile() Profile { return r.p }

// Slot returns slot i (reader-wide numbering, interface by interface).
func (r *Reader) Slot(i int) *Slot { return r.slots[i] }

// Slots returns the number of slots.
func (r *Reader) Slots() int { return len(r.slots) }

// Stats returns a copy of the counters.
func (r *Reader) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.stats
	s.Messages = map[ccid.MessageType]int{}
	for k, v := range r.stats.Messages {
		s.Messages[k] = v
	}
	s.PPS = append([][]byte(nil), s.PPS...)
	s.SetParameters = append([][]byte(nil), s.SetParameters...)
	s.Voltages = append([]byte(nil), s.Voltages...)
	s.BWI = append([]byte(nil), s.BWI...)
	return s
}

// SetClaimedElsewhere makes Claim fail with usbio.ErrBusy, as when pcscd
// holds the reader.
func (r *Reader) SetClaimedElsewhere(v bool) {
	r.mu.Lock()
	r.claimedElsewhere = v
	r.mu.Unlock()
}

// SetAccessDenied makes Open fail with usbio.ErrAccess.
func (r *Reader) SetAccessDenied(v bool) {
	r.mu.Lock()
	r.accessDenied = v
	r.mu.Unlock()
}

// HangNext makes the reader swallow the next n commands (no answer at
// all). An Abort then answers the swallowed command with CMD_ABORTED
// and itself with SlotStatus, unless abortToo: then the reader stays
// silent until a USB reset.
func (r *Reader) HangNext(n int, abortToo bool) {
	r.mu.Lock()
	r.hangNext, r.hangAbort = n, abortToo
	r.mu.Unlock()
}

// StallBulkIn halts the bulk-in endpoint: the pending and every later
// bulk-in read fail with usbio.ErrStall until a USB reset.
func (r *Reader) StallBulkIn() {
	r.mu.Lock()
	if !r.stalled {
		r.stalled = true
		close(r.stallC)
	}
	r.mu.Unlock()
}

// bulkInStall returns a channel closed while bulk-in is halted.
func (r *Reader) bulkInStall() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stallC
}

// SetCardTiming makes every XfrBlock take the time its bytes need
// between reader and card at the speed negotiated with the card (Fi/Di
// from its TA1, the reader's default clock), so that rate negotiation
// shows in timings. Off by default: the in-process tests want no waits.
func (r *Reader) SetCardTiming(on bool) {
	r.mu.Lock()
	r.timing = on
	r.mu.Unlock()
}

func (r *Reader) cardTiming() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.timing
}

// InjectStale makes the reader send a stale frame (the previous
// answer again) before its next answer.
func (r *Reader) InjectStale() {
	r.mu.Lock()
	r.staleNext = true
	r.mu.Unlock()
}

// InjectWrongSeq makes the reader send its next answer once with a
// wrong bSeq before the right one.
func (r *Reader) InjectWrongSeq() {
	r.mu.Lock()
	r.wrongSeqNext = true
	r.mu.Unlock()
}

func (r *Reader) check() error {
	select {
	case <-r.gone:
		return usbio.ErrNoDevice
	default:
		return nil
	}
}

func (r *Reader) open() (usbio.Device, error) {
	if r.accessDenied {
		return nil, fmt.Errorf("/dev/bus/usb/%s: %w", r.port, usbio.ErrAccess)
	}
	r.opens++
	return &device{r: r}, nil
}

// Opened reports how many opened handles of the device are not closed.
func (r *Reader) Opened() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.opens
}

// Claimed reports how many interfaces are claimed.
func (r *Reader) Claimed() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.conns)
}

func (r *Reader) claim(iface, alt int, eps usbio.Endpoints) (usbio.Conn, error) {
	if err := r.check(); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	in, out, intr := endpoints(iface)
	switch {
	case r.claimedElsewhere:
		return nil, fmt.Errorf("interface %d: %w", iface, usbio.ErrBusy)
	case iface < 0 || iface >= r.p.interfaces() || alt != 0:
		return nil, fmt.Errorf("no interface %d alt %d", iface, alt)
	case r.conns[iface] != nil:
		return nil, fmt.Errorf("interface %d: %w", iface, usbio.ErrBusy)
	case eps.BulkIn != in || eps.BulkOut != out || (r.p.Interrupt && eps.IntIn != intr) || (!r.p.Interrupt && eps.IntIn != 0):
		return nil, fmt.Errorf("interface %d has endpoints %02X %02X %02X, not %+v", iface, in, out, intr, eps)
	}
	c := &conn{r: r, iface: iface, bulkIn: make(chan []byte, 64), intr: make(chan []byte, 16), closed: make(chan struct{})}
	r.conns[iface] = c
	return c, nil
}

func (r *Reader) release(c *conn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.conns[c.iface] == c {
		delete(r.conns, c.iface)
	}
}

func (r *Reader) unplug() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.unplugged {
		r.unplugged = true
		close(r.gone)
	}
}

// reset is a USB port reset: the firmware starts afresh.
func (r *Reader) reset() {
	r.mu.Lock()
	r.stats.Resets++
	r.hangNext, r.hangAbort, r.hung = 0, false, nil
	if r.stalled {
		r.stalled, r.stallC = false, make(chan struct{})
	}
	r.mu.Unlock()
	for _, s := range r.slots {
		s.mu.Lock()
		s.powered = false
		s.mu.Unlock()
	}
}

// conn returns the claimed interface of slot s, or nil.
func (r *Reader) connOf(iface int) *conn {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.conns[iface]
}

// control answers a class request.
func (r *Reader) control(c *conn, reqType, req uint8, value uint16, data []byte) (int, error) {
	switch {
	case reqType == 0x21 && req == 0x01: // ABORT
		if r.p.QEMU {
			return 0, usbio.ErrStall
		}
		r.mu.Lock()
		r.stats.ControlAborts++
		r.mu.Unlock()
		return 0, nil
	case reqType == 0xA1 && req == 0x03 && r.p.DataRates != nil: // GET_DATA_RATES
		n := 0
		for _, rate := range r.p.DataRates {
			if n+4 > len(data) {
				break
			}
			binary.LittleEndian.PutUint32(data[n:], rate)
			n += 4
		}
		return n, nil
	}
	return 0, usbio.ErrStall
}

// sendFrame sends one answer, with the stale or wrong-seq frame before
// it when injected.
func (r *Reader) sendFrame(c *conn, msg []byte) {
	r.mu.Lock()
	var extra []byte
	switch {
	case r.staleNext && r.lastSent != nil:
		extra = append([]byte(nil), r.lastSent...)
		r.staleNext = false
	case r.wrongSeqNext:
		extra = append([]byte(nil), msg...)
		extra[6] += 0x55
		r.wrongSeqNext = false
	}
	r.lastSent = msg
	r.mu.Unlock()
	if extra != nil {
		c.send(extra)
	}
	c.send(msg)
}

// answer builds an RDR_to_PC message.
func answer(t ccid.MessageType, slot, seq, status, errCode, param byte, data []byte) []byte {
	return ccid.AppendMessage(nil, ccid.Message{Type: t, Slot: slot, Seq: seq, Param: [3]byte{status, errCode, param}, Data: data})
}

// Status byte helpers.
const (
	failed  = 0x40
	timeExt = 0x80
)

// handle processes one bulk-out message.
func (r *Reader) handle(c *conn, b []byte) {
	m, err := ccid.ParseMessage(b)
	if err != nil {
		if len(b) >= ccid.HeaderLen {
			rt, ok := ccid.MessageType(b[0]).Response()
			if !ok {
				rt = ccid.RDRToPCSlotStatus
			}
			r.sendFrame(c, answer(rt, b[5], b[6], failed, 0x01, 0, nil)) // bad dwLength
		}
		return
	}
	r.mu.Lock()
	r.stats.Messages[m.Type]++
	if m.Type == ccid.PCToRDRAbort {
		r.stats.Aborts++
		hung, silent := r.hung, r.hangAbort
		if !silent {
			r.hung = nil
		}
		r.mu.Unlock()
		if silent {
			return
		}
		for _, h := range hung {
			rt, ok := h.typ.Response()
			if !ok {
				rt = ccid.RDRToPCSlotStatus
			}
			st := byte(2)
			if hs := r.slotOf(h.c.iface, int(h.slot)); hs != nil {
				st = hs.iccStatus()
			}
			r.sendFrame(h.c, answer(rt, h.slot, h.seq, failed|st, 0xFF, 0, nil))
		}
		st := byte(2)
		if s := r.slotOf(c.iface, int(m.Slot)); s != nil {
			s.abortBusy()
			st = s.iccStatus()
		}
		if r.p.QEMU { // QEMU does not implement Abort: "command not supported"
			st |= failed
		}
		r.sendFrame(c, answer(ccid.RDRToPCSlotStatus, m.Slot, m.Seq, st, 0, 0, nil))
		return
	}
	if r.hangNext > 0 || (r.hangAbort && len(r.hung) > 0) {
		if r.hangNext > 0 {
			r.hangNext--
		}
		r.hung = append(r.hung, pendingCmd{c: c, typ: m.Type, slot: m.Slot, seq: m.Seq})
		r.mu.Unlock()
		return
	}
	r.mu.Unlock()
	rt, ok := m.Type.Response()
	if !ok {
		r.sendFrame(c, answer(ccid.RDRToPCSlotStatus, m.Slot, m.Seq, failed, 0x00, 0, nil))
		return
	}
	s := r.slotOf(c.iface, int(m.Slot))
	if s == nil {
		st := byte(failed | 2)
		if r.p.QEMU { // QEMU 7.2 does not check bSlot
			s = r.slotOf(c.iface, 0)
		} else {
			r.sendFrame(c, answer(rt, m.Slot, m.Seq, st, 0x05, 0, nil))
			return
		}
	}
	s.handle(c, m, rt)
}

// slotOf returns slot bSlot of interface iface, or nil.
func (r *Reader) slotOf(iface, bSlot int) *Slot {
	if bSlot < 0 || bSlot >= r.p.Descriptor.Slots() {
		return nil
	}
	return r.slots[iface*r.p.Descriptor.Slots()+bSlot]
}

// acquireBusy counts a slot as busy; false when the reader's
// bMaxCCIDBusySlots are all in use.
func (r *Reader) acquireBusy() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.busy >= int(r.p.Descriptor.BusySlots()) {
		r.stats.SlotBusy++
		return false
	}
	r.busy++
	if r.busy > r.stats.MaxBusy {
		r.stats.MaxBusy = r.busy
	}
	return true
}

func (r *Reader) releaseBusy() {
	r.mu.Lock()
	r.busy--
	r.mu.Unlock()
}

func (r *Reader) record(f func(*Stats)) {
	r.mu.Lock()
	f(&r.stats)
	r.mu.Unlock()
}

// notifySlots sends NotifySlotChange for interface iface with slot s
// marked changed.
func (r *Reader) notifySlots(iface int, changed *Slot) {
	if !r.p.Interrupt {
		return
	}
	c := r.connOf(iface)
	if c == nil {
		return
	}
	n := r.p.Descriptor.Slots()
	msg := ccid.AppendNotifySlotChange(nil, n,
		func(i int) bool { return r.slotOf(iface, i).Present() },
		func(i int) bool { return r.slotOf(iface, i) == changed })
	c.notify(msg)
}
