package ccidsim

import (
	"sync"
	"time"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/card/atr"
	"github.com/wsrc-go/wsrc/ccid"
	"github.com/wsrc-go/wsrc/ccid/t1"
)

// Card is what a simulated slot holds; *sim.Card (package card/sim)
// is one. Process gets what the reader passes to the card: a T=0 TPDU,
// or a whole APDU at the APDU levels and for T=1 (after the block
// protocol).
type Card interface {
	ATR() []byte
	Process(cmd []byte) []byte
}

// CardQuirks describes how a simulated card behaves beyond its APDUs.
type CardQuirks struct {
	// Mute: the card never answers a command; the reader reports
	// ICC_MUTE and deactivates it (as the sysmoOCTSIM does).
	Mute bool
	// Delay is how long each command takes.
	Delay time.Duration
	// WTX, with Delay, makes the reader send a time extension request
	// (bmCommandStatus 2, bError 1) every WTX while the card works.
	WTX time.Duration
	// RejectPPS: the card does not answer PPS (it stays mute until a
	// cold reset).
	RejectPPS bool
	// MaxTA1 is the fastest TA1 the card accepts in a PPS (same Fi, Di
	// index at most this one's); 0 means its ATR's TA1.
	MaxTA1 byte
	// Classes lists the voltages the card works at: bit 0 5 V, bit 1
	// 3 V, bit 2 1.8 V; 0 means all. At other voltages it is mute.
	Classes byte
	// T1 configures the card end of T=1 (IFSC, CRC, S(WTX) requests);
	// IFSC and CRC default to the ATR's.
	T1 t1.CardConfig
}

// Slot is one simulated card slot.
type Slot struct {
	r     *Reader
	iface int
	bSlot int
	index int

	mu sync.Mutex
	// Guarded by mu.
	card       Card
	q          CardQuirks
	present    bool
	powered    bool
	ever       []byte // last ATR, for QEMU's stale ATR
	cardProto  int    // protocol the card runs
	cardTA1    byte   // speed the card runs
	rdrProto   int    // protocol the reader's UART is set to
	rdrTA1     byte   // speed the reader's UART is set to
	ppsAllowed bool   // no exchange since the ATR: PPS may come
	t1         *t1.CardSide
	busy       bool
	abort      chan struct{} // closed by an Abort of the busy command
	endBusy    func()        // ends the busy command (once)
	removeNext bool
	chain      []byte // extended APDU command being assembled
	rsp        []byte // extended APDU response not yet sent
}

// Insert puts a card in the slot (notifying the host).
func (s *Slot) Insert(c Card, q CardQuirks) {
	s.mu.Lock()
	s.card, s.q, s.present, s.powered = c, q, true, false
	s.mu.Unlock()
	s.r.notifySlots(s.iface, s)
}

// Remove takes the card out (notifying the host).
func (s *Slot) Remove() {
	s.mu.Lock()
	s.present, s.powered, s.card = false, false, nil
	s.mu.Unlock()
	s.r.notifySlots(s.iface, s)
}

// RemoveDuringNextCommand makes the card disappear while the next
// XfrBlock runs: the reader answers it with "no card".
func (s *Slot) RemoveDuringNextCommand() {
	s.mu.Lock()
	s.removeNext = true
	s.mu.Unlock()
}

// SetQuirks changes the card's behaviour.
func (s *Slot) SetQuirks(q CardQuirks) {
	s.mu.Lock()
	s.q = q
	s.mu.Unlock()
}

// Present reports whether a card is in the slot.
func (s *Slot) Present() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.present
}

// Powered reports whether the card is powered.
func (s *Slot) Powered() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.powered
}

// Params returns the protocol and TA1 the card runs at.
func (s *Slot) Params() (proto int, ta1 byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cardProto, s.cardTA1
}

// T1 returns the card end of T=1 of the powered card (nil for T=0), to
// inject block-level faults.
func (s *Slot) T1() *t1.CardSide {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.t1
}

// iccStatus is bmICCStatus; mu must not be held.
func (s *Slot) iccStatus() byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.iccLocked()
}

func (s *Slot) iccLocked() byte {
	switch {
	case !s.present:
		return 2
	case !s.powered:
		return 1
	}
	return 0
}

func (s *Slot) desc() ccid.Descriptor { return s.r.p.Descriptor }

// handle answers one command for this slot.
func (s *Slot) handle(c *conn, m ccid.Message, rt ccid.MessageType) {
	reply := func(status, errCode, param byte, data []byte) {
		s.r.sendFrame(c, answer(rt, m.Slot, m.Seq, status, errCode, param, data))
	}
	s.mu.Lock()
	if s.busy {
		s.mu.Unlock()
		s.r.record(func(st *Stats) { st.SlotBusy++ })
		reply(failed|s.iccStatus(), 0xE0, 0, nil)
		return
	}
	switch m.Type {
	case ccid.PCToRDRIccPowerOn:
		st, code, data := s.powerOn(m.Param[0])
		s.mu.Unlock()
		reply(st, code, 0, data)
	case ccid.PCToRDRIccPowerOff:
		s.powered, s.t1 = false, nil
		st := s.iccLocked()
		s.mu.Unlock()
		reply(st, 0, 1, nil)
	case ccid.PCToRDRGetSlotStatus:
		st := s.iccLocked()
		s.mu.Unlock()
		reply(st, 0, 0, nil)
	case ccid.PCToRDRGetParameters, ccid.PCToRDRResetParameters:
		if m.Type == ccid.PCToRDRResetParameters {
			s.rdrTA1, s.rdrProto = atr.DefaultTA1, s.cardProto
		}
		p := s.paramsLocked()
		st := s.iccLocked()
		s.mu.Unlock()
		if s.r.p.QEMU && m.Type == ccid.PCToRDRGetParameters {
			// dwLength 0 but the protocol data follows anyway (7.2 bug).
			s.r.sendFrame(c, append(answer(rt, m.Slot, m.Seq, st, 0, byte(s.rdrProto), nil), p...))
			return
		}
		reply(st, 0, byte(s.rdrProto), p)
	case ccid.PCToRDRSetParameters:
		st, code := s.setParameters(m.Param[0], m.Data)
		p := s.paramsLocked()
		proto := s.rdrProto
		s.mu.Unlock()
		reply(st, code, byte(proto), p)
	case ccid.PCToRDRXfrBlock:
		if m.Param[0] != 0 {
			s.r.record(func(st *Stats) { st.BWI = append(st.BWI, m.Param[0]) })
		}
		s.xfrBlock(c, m, reply)
	case ccid.PCToRDRSetDataRateAndClockFrequency:
		st := s.iccLocked()
		s.mu.Unlock()
		reply(st, 0, 0, m.Data)
	case ccid.PCToRDREscape:
		st := s.iccLocked()
		s.mu.Unlock()
		if s.r.p.QEMU {
			s.r.sendFrame(c, answer(ccid.RDRToPCSlotStatus, m.Slot, m.Seq, failed|st, 0, 0, nil))
			return
		}
		reply(failed|st, 0x00, 0, nil)
	default: // IccClock, T0APDU, Secure, Mechanical: not supported
		st := s.iccLocked()
		s.mu.Unlock()
		reply(failed|st, 0x00, 0, nil)
	}
}

// voltageClass maps bPowerSelect to the card class bit.
func voltageClass(v byte) byte {
	switch v {
	case ccid.Voltage5V:
		return 1
	case ccid.Voltage3V:
		return 2
	case ccid.Voltage18V:
		return 4
	}
	return 0
}

// powerOn activates the card; mu is held.
func (s *Slot) powerOn(v byte) (status, code byte, data []byte) {
	s.r.record(func(st *Stats) { st.Voltages = append(st.Voltages, v) })
	d := s.desc()
	if !s.present {
		if s.r.p.QEMU && s.ever != nil {
			return failed | 2, 0xFE, s.ever
		}
		return failed | 2, 0xFE, nil
	}
	auto := d.Features.Has(ccid.FeatureAutoVoltage) || d.Features.Has(ccid.FeatureAutoActivation)
	class := voltageClass(v)
	switch {
	case v > ccid.Voltage18V:
		return failed | s.iccLocked(), 0x07, nil
	case v != ccid.VoltageAuto && d.VoltageSupport&class == 0:
		return failed | s.iccLocked(), 0x07, nil
	case v == ccid.VoltageAuto && !auto:
		// The reader picks its highest voltage.
		for _, c := range []byte{1, 2, 4} {
			if d.VoltageSupport&c != 0 {
				class = c
				break
			}
		}
	}
	if !auto && s.q.Classes != 0 && s.q.Classes&class == 0 {
		s.powered = false
		return failed | 1, 0xFE, nil
	}
	a := s.card.ATR()
	s.ever = a
	s.powered = true
	s.ppsAllowed = true
	s.chain, s.rsp = nil, nil
	s.cardProto, s.cardTA1 = 0, atr.DefaultTA1
	if pa, err := atr.Parse(a); err == nil || pa != nil {
		s.cardProto = pa.DefaultProtocol()
		if p, _, _, ok := pa.SpecificMode(); ok {
			s.cardProto = p
		}
		if d.Features.Has(ccid.FeatureAutoPPSProp) {
			s.cardTA1 = s.autoTA1(pa)
		}
	}
	s.rdrProto, s.rdrTA1 = s.cardProto, s.cardTA1
	s.newT1()
	return 0, 0, a
}

// autoTA1 is the speed a reader that negotiates by itself picks.
func (s *Slot) autoTA1(pa *atr.ATR) byte {
	ta, ok := pa.TA1()
	if !ok || !pa.ISOSpeed() {
		return atr.DefaultTA1
	}
	if atr.BaudRate(ta, int(s.desc().DefaultClock)) <= int(s.desc().MaxDataRate) {
		return ta
	}
	return atr.DefaultTA1
}

// newT1 starts the card end of T=1 when the card runs T=1; mu is held.
func (s *Slot) newT1() {
	s.t1 = nil
	if s.cardProto != 1 || s.card == nil {
		return
	}
	cfg := s.q.T1
	if pa, _ := atr.Parse(s.card.ATR()); pa != nil {
		if cfg.IFSC == 0 {
			cfg.IFSC = pa.IFSC()
		}
		cfg.CRC = cfg.CRC || pa.CRC()
	}
	process := s.card.Process
	s.t1 = t1.NewCardSide(func(apdu []byte) []byte { return process(apdu) }, cfg)
}

// acceptsTA1 reports whether the card agrees to run at ta1.
func (s *Slot) acceptsTA1(ta1 byte) bool {
	if ta1 == atr.DefaultTA1 {
		return true
	}
	pa, _ := atr.Parse(s.card.ATR())
	if pa == nil {
		return false
	}
	max := s.q.MaxTA1
	if max == 0 {
		var ok bool
		if max, ok = pa.TA1(); !ok {
			return false
		}
	}
	return ta1>>4 == max>>4 && ta1&0x0F >= 1 && ta1&0x0F <= max&0x0F
}

// rateOK reports whether the reader can run at ta1.
func (s *Slot) rateOK(ta1 byte) bool {
	d := s.desc()
	rate := atr.BaudRate(ta1, int(d.DefaultClock))
	if rate == 0 || rate > int(d.MaxDataRate)+2 {
		return false
	}
	if len(s.r.p.DataRates) == 0 {
		return true
	}
	for _, r := range s.r.p.DataRates {
		if diff := int(r) - rate; diff >= -2 && diff <= 2 {
			return true
		}
	}
	return false
}

// setParameters applies SetParameters; mu is held.
func (s *Slot) setParameters(proto byte, data []byte) (status, code byte) {
	s.r.record(func(st *Stats) {
		st.SetParameters = append(st.SetParameters, append([]byte{proto}, data...))
	})
	d := s.desc()
	switch {
	case !s.present:
		return failed | 2, 0xFE
	case proto > 1 || d.Protocols&(1<<proto) == 0:
		return failed | s.iccLocked(), 0x07
	case (proto == 0 && len(data) != 5) || (proto == 1 && len(data) != 7):
		return failed | s.iccLocked(), 0x01
	case !s.rateOK(data[0]):
		return failed | s.iccLocked(), 0x0A
	}
	ta1 := data[0]
	if d.Features.Has(ccid.FeatureAutoPPS) && s.powered && (ta1 != s.cardTA1 || int(proto) != s.cardProto) {
		// The reader runs PPS with the card itself.
		if s.q.RejectPPS || !s.acceptsTA1(ta1) || !s.offers(int(proto)) {
			s.powered, s.t1 = false, nil
			return failed | 1, 0xFE
		}
		s.cardTA1, s.cardProto = ta1, int(proto)
		s.newT1()
	}
	s.rdrTA1, s.rdrProto = ta1, int(proto)
	return s.iccLocked(), 0
}

// offers reports whether the card's ATR offers protocol t.
func (s *Slot) offers(t int) bool {
	pa, _ := atr.Parse(s.card.ATR())
	return pa != nil && pa.Offers(t)
}

// paramsLocked encodes the reader's protocol data structure.
func (s *Slot) paramsLocked() []byte {
	if s.rdrProto == 1 {
		return []byte{s.rdrTA1, 0x10, 0, 0x4D, 0, 0x20, 0}
	}
	return []byte{s.rdrTA1, 0, 0, 0x0A, 0}
}

// pps answers a PPS request; mu is held. ok false means the card is
// mute now.
func (s *Slot) pps(req []byte) ([]byte, bool) {
	s.r.record(func(st *Stats) { st.PPS = append(st.PPS, append([]byte(nil), req...)) })
	if s.q.RejectPPS || len(req) < 3 || len(req) > 6 {
		return nil, false
	}
	var x byte
	for _, b := range req {
		x ^= b
	}
	proto := int(req[1] & 0x0F)
	if x != 0 || !s.offers(proto) {
		return nil, false
	}
	ta1 := byte(atr.DefaultTA1)
	if req[1]&0x10 != 0 {
		ta1 = req[2]
	}
	if !s.acceptsTA1(ta1) {
		return nil, false
	}
	s.cardProto, s.cardTA1 = proto, ta1
	s.newT1()
	return append([]byte(nil), req...), true
}

// xfrBlock runs one XfrBlock; mu is held on entry and released here.
func (s *Slot) xfrBlock(c *conn, m ccid.Message, reply func(status, code, param byte, data []byte)) {
	d := s.desc()
	limit := int(d.MaxMessageLength)
	if limit == 263 { // SCM firmware takes 270
		limit = 270
	}
	switch {
	case s.removeNext && s.present:
		s.removeNext, s.present, s.powered, s.card = false, false, false, nil
		s.mu.Unlock()
		s.r.notifySlots(s.iface, s)
		reply(failed|2, 0xFE, 0, nil)
		return
	case !s.present && s.r.p.QEMU:
		s.mu.Unlock()
		reply(2, 0, 0, nil) // QEMU: "no card" without the failed bit
		return
	case !s.present:
		s.mu.Unlock()
		reply(failed|2, 0xFE, 0, nil)
		return
	case !s.powered:
		s.mu.Unlock()
		reply(failed|1, 0xFE, 0, nil)
		return
	case ccid.HeaderLen+len(m.Data) > limit:
		st := s.iccLocked()
		s.mu.Unlock()
		reply(failed|st, 0x01, 0, nil)
		return
	case s.rdrTA1 != s.cardTA1 || s.rdrProto != s.cardProto:
		// The reader's UART and the card disagree: garbage.
		s.mu.Unlock()
		reply(failed, 0xFD, 0, nil)
		return
	}
	level := d.Features.ExchangeLevel()
	if level == ccid.LevelTPDU && s.ppsAllowed && len(m.Data) > 0 && m.Data[0] == 0xFF {
		resp, ok := s.pps(m.Data)
		s.ppsAllowed = false
		if !ok {
			s.powered, s.t1 = false, nil
			s.mu.Unlock()
			reply(failed|1, 0xFE, 0, nil)
			return
		}
		s.mu.Unlock()
		reply(0, 0, 0, resp)
		return
	}
	s.ppsAllowed = false
	q := s.q
	if q.Mute {
		s.powered, s.t1 = false, nil
		s.mu.Unlock()
		reply(failed|1, 0xFE, 0, nil)
		return
	}
	work := s.work(level, m)
	delay := q.Delay + s.transferTime(len(m.Data)+len(work.data))
	if delay <= 0 {
		s.mu.Unlock()
		s.finish(work, reply)
		return
	}
	if !s.r.acquireBusy() {
		s.mu.Unlock()
		reply(failed, 0xE0, 0, nil)
		return
	}
	s.busy = true
	abort := make(chan struct{})
	var once sync.Once
	end := func() {
		once.Do(func() {
			s.busy, s.abort, s.endBusy = false, nil, nil
			s.r.releaseBusy()
		})
	}
	s.abort, s.endBusy = abort, end
	s.mu.Unlock()
	c.spawn(func() {
		defer func() {
			s.mu.Lock()
			end()
			s.mu.Unlock()
		}()
		done := time.NewTimer(delay)
		defer done.Stop()
		var tick <-chan time.Time
		if q.WTX > 0 {
			t := time.NewTicker(q.WTX)
			defer t.Stop()
			tick = t.C
		}
		for {
			select {
			case <-done.C:
				s.mu.Lock()
				end()
				s.mu.Unlock()
				s.finish(work, reply)
				return
			case <-tick:
				reply(timeExt, 1, 0, nil)
			case <-abort:
				reply(failed|s.iccStatus(), 0xFF, 0, nil) // CMD_ABORTED
				return
			case <-c.closed:
				return
			}
		}
	})
}

// transferTime is how long n bytes take between reader and card at the
// speed the card runs (its TA1 and the reader's default clock) when the
// reader simulates card timing (Reader.SetCardTiming): 12 etu a
// character for T=0 (start, 8 data bits, parity, 2 guard etu), 11 for
// T=1. mu is held.
func (s *Slot) transferTime(n int) time.Duration {
	if !s.r.cardTiming() || n <= 0 {
		return 0
	}
	rate := atr.BaudRate(s.cardTA1, int(s.desc().DefaultClock))
	if rate <= 0 {
		return 0
	}
	etu := 12
	if s.cardProto == 1 {
		etu = 11
	}
	return time.Duration(int64(n) * int64(etu) * int64(time.Second) / int64(rate))
}

// abortBusy stops a command in progress (PC_to_RDR_Abort).
func (s *Slot) abortBusy() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.busy && s.abort != nil {
		close(s.abort)
		s.endBusy()
	}
}

// result is what the card (through the reader) answers.
type result struct {
	status, code, chain byte
	data                []byte
	drop                bool // QEMU: too long, nothing is sent
}

// work computes the answer to an XfrBlock now (the card's state changes
// at once); mu is held.
func (s *Slot) work(level ccid.ExchangeLevel, m ccid.Message) result {
	d := s.desc()
	switch {
	case s.r.p.QEMU:
		rsp := s.card.Process(m.Data)
		return result{data: rsp, drop: ccid.HeaderLen+len(rsp) > 384}
	case level == ccid.LevelTPDU && s.cardProto == 1:
		if s.t1 == nil {
			return result{status: failed | 1, code: 0xFE}
		}
		blk := s.t1.HandleBlock(m.Data)
		if blk == nil {
			return result{status: failed, code: 0xFE}
		}
		return result{data: blk}
	case level == ccid.LevelTPDU:
		tp := m.Data
		if len(tp) < 5 || len(tp) > 260 || (len(tp) > 5 && len(tp) != 5+int(tp[4])) {
			return result{status: failed, code: 0x01}
		}
		return result{data: s.card.Process(tp)}
	case level == ccid.LevelShortAPDU:
		return result{data: s.apdu(m.Data)}
	}
	// Extended APDU level: wLevelParameter chaining.
	lp := uint16(m.Param[1]) | uint16(m.Param[2])<<8
	maxBlock := int(d.MaxMessageLength) - ccid.HeaderLen
	if lp != ccid.ChainNone && lp != ccid.ChainMore {
		s.r.record(func(st *Stats) { st.ChainedBlocks++ })
	}
	switch lp {
	case ccid.ChainBegin:
		s.chain = append([]byte(nil), m.Data...)
		return result{chain: ccid.ChainMore}
	case ccid.ChainContinue:
		s.chain = append(s.chain, m.Data...)
		return result{chain: ccid.ChainMore}
	case ccid.ChainEnd:
		cmd := append(s.chain, m.Data...)
		s.chain = nil
		s.rsp = s.apdu(cmd)
	case ccid.ChainNone:
		s.rsp = s.apdu(m.Data)
	case ccid.ChainMore:
		if s.rsp == nil {
			return result{status: failed, code: 0x08}
		}
		n := min(maxBlock, len(s.rsp))
		out := s.rsp[:n]
		s.rsp = s.rsp[n:]
		s.r.record(func(st *Stats) { st.ChainedBlocks++ })
		if len(s.rsp) == 0 {
			s.rsp = nil
			return result{data: out, chain: ccid.ChainEnd}
		}
		return result{data: out, chain: ccid.ChainContinue}
	default:
		return result{status: failed, code: 0x08}
	}
	if len(s.rsp) <= maxBlock {
		out := s.rsp
		s.rsp = nil
		return result{data: out}
	}
	out := s.rsp[:maxBlock]
	s.rsp = s.rsp[maxBlock:]
	s.r.record(func(st *Stats) { st.ChainedBlocks++ })
	return result{data: out, chain: ccid.ChainBegin}
}

// apdu runs a whole APDU on the card as an APDU-level reader does with a
// T=0 card: GET RESPONSE for 61xx, re-send with Le for 6Cxx.
func (s *Slot) apdu(cmd []byte) []byte {
	r := s.card.Process(cmd)
	var acc []byte
	for i := 0; i < card.MaxFollow && len(r) >= 2; i++ {
		sw1, sw2 := r[len(r)-2], r[len(r)-1]
		switch {
		case sw1 == 0x61:
			acc = append(acc, r[:len(r)-2]...)
			r = s.card.Process([]byte{cmd[0], 0xC0, 0, 0, sw2})
		case sw1 == 0x6C && len(cmd) >= 4:
			c, err := card.ParseCommand(cmd)
			if err != nil {
				return r
			}
			c.Ne, c.Extended = int(sw2), false
			if sw2 == 0 {
				c.Ne = 256
			}
			cmd = c.Bytes()
			r = s.card.Process(cmd)
		default:
			return append(acc, r...)
		}
	}
	return append(acc, r...)
}

// finish sends a computed answer.
func (s *Slot) finish(w result, reply func(status, code, param byte, data []byte)) {
	if w.drop {
		return
	}
	if w.status&failed != 0 && w.code == 0xFE && w.status&3 == 1 {
		s.mu.Lock()
		s.powered, s.t1 = false, nil
		s.mu.Unlock()
	}
	reply(w.status|s.iccStatus(), w.code, w.chain, w.data)
}
