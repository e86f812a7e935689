package ccid

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/card/atr"
	"github.com/wsrc-go/wsrc/ccid/t1"
)

// coldResetDelay is how long a card stays unpowered in a cold reset.
var coldResetDelay = 20 * time.Millisecond

// DefaultVoltages is the power-on order for readers without automatic
// voltage selection: libccid's default, 5 V then 1.8 V then 3 V
// (src/commands.c CmdPowerOn). Voltages the reader does not list in
// bVoltageSupport are skipped.
var DefaultVoltages = []byte{Voltage5V, Voltage18V, Voltage3V}

// slot is one card slot of a link. A command sequence (power-up,
// negotiation, one APDU with its chained blocks, a presence poll) holds
// lock from start to end, so at most one command is outstanding per
// slot.
type slot struct {
	l        *link
	bSlot    int    // bSlot on the link
	index    int    // slot number in the reader
	name     string // "<reader> slot <index>", for errors
	level    ExchangeLevel
	voltages []byte
	log      *slog.Logger
	lock     chan struct{} // capacity 1
	// gen counts cards: the monitor bumps it when it sees the card go
	// (or be swapped). Handles and Open funcs compare it.
	gen atomic.Uint64
	// present is the monitor's view of the slot (written only by it).
	present atomic.Bool
	// active is set while a handle holds a powered card; a card the
	// reader then reports inactive was swapped or deactivated.
	active atomic.Bool
	// poke asks the link's monitor to check presence now.
	poke func()
	// recheck asks for a presence check once the slot is unlocked: set
	// by a command that saw the card go inactive, and by the monitor when
	// it found the slot busy.
	recheck atomic.Bool

	// Guarded by lock.
	powered bool
	cardGen uint64 // gen of the powered card
	opens   uint64 // bumped by every open; older handles are dead
	atr     []byte
	parsed  *atr.ATR // nil for a non-ISO ATR
	proto   int
	ta1     byte
	timeout time.Duration
	t1      *t1.Conn
}

func newSlot(l *link, bSlot, index int, readerName string, level ExchangeLevel, voltages []byte, log *slog.Logger) *slot {
	s := &slot{l: l, bSlot: bSlot, index: index, name: fmt.Sprintf("%s slot %d", readerName, index),
		level: level, voltages: voltages, log: log, lock: make(chan struct{}, 1), poke: func() {}}
	s.gen.Store(1)
	return s
}

func (s *slot) lockCtx(ctx context.Context) error {
	select {
	case s.lock <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("ccid: %s: waiting for the slot: %w", s.name, ctx.Err())
	case <-s.l.done:
		return s.l.gone()
	}
}

func (s *slot) tryLock() bool {
	select {
	case s.lock <- struct{}{}:
		return true
	default:
		return false
	}
}

// unlock releases the slot and pokes the monitor if a check is due.
func (s *slot) unlock() {
	<-s.lock
	if s.recheck.Swap(false) {
		s.poke()
	}
}

// slotErr turns a response into a *SlotError.
func (s *slot) slotErr(cmd MessageType, r Message) *SlotError {
	return &SlotError{Reader: s.l.name, Slot: s.index, Command: cmd, Status: r.Status(), Code: r.ErrorCode(),
		Failed: r.Failed(), Removed: s.powered && r.ICC() == ICCAbsent}
}

// do runs one command; a failed status becomes a *SlotError.
func (s *slot) do(ctx context.Context, m Message, timeout time.Duration) (Message, error) {
	r, err := s.l.transact(ctx, s.bSlot, m, timeout)
	if err != nil {
		return r, err
	}
	if r.Failed() {
		return r, s.slotErr(m.Type, r)
	}
	return r, nil
}

// status runs GetSlotStatus.
func (s *slot) status(ctx context.Context) (ICCStatus, error) {
	r, err := s.l.transact(ctx, s.bSlot, GetSlotStatus(), defaultTimeout)
	if err != nil {
		return 0, err
	}
	return r.ICC(), nil
}

// powerVoltages lists the bPowerSelect values to try.
func (s *slot) powerVoltages() []byte {
	f := s.l.desc.Features
	if f.Has(FeatureAutoVoltage) || f.Has(FeatureAutoActivation) || s.l.desc.VoltageSupport == 0 {
		return []byte{VoltageAuto}
	}
	var vs []byte
	for _, v := range s.voltages {
		if s.l.desc.VoltageSupport&voltageBit(v) != 0 {
			vs = append(vs, v)
		}
	}
	if len(vs) == 0 {
		return []byte{VoltageAuto}
	}
	return vs
}

// powerUp sends IccPowerOn, trying each voltage in turn, and returns the
// ATR. No card stops at once; a card that fails at one voltage is tried
// at the next.
func (s *slot) powerUp(ctx context.Context) ([]byte, error) {
	var last error
	for _, v := range s.powerVoltages() {
		r, err := s.l.transact(ctx, s.bSlot, IccPowerOn(v), powerOnTimeout)
		if err != nil {
			return nil, err
		}
		if r.Failed() || r.ICC() != ICCActive {
			e := s.slotErr(PCToRDRIccPowerOn, r)
			if r.ICC() == ICCAbsent {
				return nil, e
			}
			s.log.Debug("ccid: power-up failed", "slot", s.name, "voltage", voltageName(v), "err", e)
			last = fmt.Errorf("at %s: %w", voltageName(v), e)
			continue
		}
		if len(r.Data) == 0 {
			last = fmt.Errorf("ccid: %s: IccPowerOn at %s returned an empty ATR: %w", s.name, voltageName(v), card.ErrMute)
			continue
		}
		return r.Data, nil
	}
	return nil, last
}

// powerOff sends IccPowerOff and forgets the card's state.
func (s *slot) powerOff(ctx context.Context) error {
	s.powered, s.t1 = false, nil
	_, err := s.do(ctx, IccPowerOff(), defaultTimeout)
	return err
}

// coldCycle powers the card off and on again and returns the new ATR.
func (s *slot) coldCycle(ctx context.Context) ([]byte, error) {
	if err := s.powerOff(ctx); err != nil && !errors.Is(err, card.ErrNoCard) {
		return nil, err
	}
	t := time.NewTimer(coldResetDelay)
	select {
	case <-t.C:
	case <-ctx.Done():
		t.Stop()
		return nil, ctx.Err()
	}
	return s.powerUp(ctx)
}

// chooseProtocol picks the protocol: the one TA2 imposes in specific
// mode, else the first one the card offers that the reader supports
// (the card's default protocol when possible, which needs no PPS).
func (s *slot) chooseProtocol(a *atr.ATR) (int, error) {
	d := s.l.desc
	supports := func(t int) bool { return (t == 0 && d.SupportsT0()) || (t == 1 && d.SupportsT1()) }
	if a == nil {
		for _, t := range []int{0, 1} {
			if supports(t) {
				return t, nil
			}
		}
		return 0, fmt.Errorf("ccid: %s: %w: the reader announces neither T=0 nor T=1", s.name, ErrUnsupported)
	}
	if p, _, _, ok := a.SpecificMode(); ok {
		if !supports(p) {
			return 0, fmt.Errorf("ccid: %s: %w: the card runs T=%d only (specific mode), the reader supports %s",
				s.name, ErrUnsupported, p, d.ProtocolNames())
		}
		return p, nil
	}
	for _, t := range a.Protocols() {
		if supports(t) {
			return t, nil
		}
	}
	return 0, fmt.Errorf("ccid: %s: %w: the card offers T=%v, the reader supports %s",
		s.name, ErrUnsupported, a.Protocols(), d.ProtocolNames())
}

// setup brings a freshly reset card into use: parse the ATR, choose the
// protocol, negotiate the speed, compute the timeout and start T=1.
func (s *slot) setup(ctx context.Context, raw []byte) error {
	a, err := atr.Parse(raw)
	if err != nil && !errors.Is(err, atr.ErrTCK) {
		s.log.Warn("ccid: non-ISO ATR, using defaults", "slot", s.name, "atr", fmt.Sprintf("%X", raw), "err", err)
		a = nil
	}
	proto, err := s.chooseProtocol(a)
	if err != nil {
		return err
	}
	s.atr, s.parsed, s.proto, s.t1 = raw, a, proto, nil
	s.ta1 = atr.DefaultTA1
	f := s.l.desc.Features
	switch {
	case a == nil:
	case f.Has(FeatureAutoPPSProp):
		// The reader negotiates by itself; assume it runs the card's TA1.
		if ta, ok := a.TA1(); ok && a.ISOSpeed() {
			s.ta1 = ta
		}
	default:
		if s.ta1, err = s.negotiate(ctx, a, proto); err != nil {
			return err
		}
	}
	s.timeout = cardTimeout(s.parsed, proto, s.ta1, s.l.desc.DefaultClock)
	s.log.Debug("ccid: card ready", "slot", s.name, "atr", fmt.Sprintf("%X", s.atr), "protocol", proto,
		"ta1", fmt.Sprintf("%02X", s.ta1), "rate", atr.BaudRate(s.ta1, int(s.l.desc.DefaultClock)), "timeout", s.timeout)
	if proto == 1 && s.level == LevelTPDU {
		return s.startT1(ctx)
	}
	return nil
}

// negotiate runs PPS (when the reader leaves it to the host) and
// SetParameters, fastest speed first, and returns the TA1 in force. A
// failed attempt is followed by a cold reset and the next slower speed
// (ISO 7816-3 §9.3: after a failed PPS the card must be reset).
func (s *slot) negotiate(ctx context.Context, a *atr.ATR, proto int) (byte, error) {
	d := s.l.desc
	cands, err := speedCandidates(a, d, s.l.rates)
	if err != nil {
		return 0, fmt.Errorf("ccid: %s: %w", s.name, err)
	}
	_, _, _, specific := a.SpecificMode()
	hostPPS := s.level == LevelTPDU && !d.Features.Has(FeatureAutoPPS) && !specific
	var last error
	for i, ta := range cands {
		if i > 0 {
			raw, err := s.coldCycle(ctx)
			if err != nil {
				return 0, err
			}
			s.atr = raw
		}
		use := ta
		if hostPPS && (proto != a.DefaultProtocol() || ta != atr.DefaultTA1) {
			got, err := s.pps(ctx, proto, ta)
			if err != nil {
				if fatal(ctx, err) {
					return 0, err
				}
				s.log.Debug("ccid: PPS failed", "slot", s.name, "ta1", fmt.Sprintf("%02X", ta), "err", err)
				last = err
				continue
			}
			use = got
		}
		params := paramsT0(a, use)
		if proto == 1 {
			params = paramsT1(a, use)
		}
		if _, err := s.do(ctx, SetParameters(byte(proto), params), defaultTimeout); err != nil {
			if fatal(ctx, err) {
				return 0, err
			}
			s.log.Debug("ccid: SetParameters failed", "slot", s.name, "ta1", fmt.Sprintf("%02X", use), "err", err)
			last = err
			continue
		}
		return use, nil
	}
	return 0, fmt.Errorf("ccid: %s: %w at every speed: %w", s.name, ErrPPS, last)
}

// fatal reports errors that end a negotiation at once.
func fatal(ctx context.Context, err error) bool {
	return ctx.Err() != nil || errors.Is(err, card.ErrNoCard) || errors.Is(err, card.ErrRemoved) ||
		errors.Is(err, ErrReaderGone) || errors.Is(err, ErrReaderHung)
}

// pps sends a PPS request through the TPDU pipe and returns the TA1 the
// card accepted.
func (s *slot) pps(ctx context.Context, proto int, ta1 byte) (byte, error) {
	req := ppsRequest(proto, ta1)
	r, err := s.xfr(ctx, 0, 0, req, defaultTimeout)
	if err != nil {
		return 0, err
	}
	got, ok := ppsAccepted(req, r.Data)
	if !ok {
		return 0, fmt.Errorf("ccid: %s: %w: request % X, response % X", s.name, ErrPPS, req, r.Data)
	}
	return got, nil
}

// ifsd is the host's IFSD for T=1: dwMaxIFSD, within 1..254.
func (s *slot) ifsd() int {
	n := int(s.l.desc.MaxIFSD)
	if n <= 0 || n > t1.MaxINF {
		return t1.MaxINF
	}
	return n
}

// startT1 starts the host end of T=1 for a TPDU-level reader and
// negotiates IFSD unless the reader does it.
func (s *slot) startT1(ctx context.Context) error {
	cfg := t1.Config{IFSC: 32, IFSD: s.ifsd(), Logger: s.log}
	if s.parsed != nil {
		cfg.IFSC, cfg.CRC = s.parsed.IFSC(), s.parsed.CRC()
	}
	s.t1 = t1.New(t1Link{s}, cfg)
	if s.l.desc.Features.Has(FeatureAutoIFSD) {
		return nil
	}
	if err := s.t1.NegotiateIFSD(ctx, s.ifsd()); err != nil {
		return fmt.Errorf("ccid: %s: negotiating IFSD %d: %w", s.name, s.ifsd(), err)
	}
	return nil
}

// t1Link is the t1.Exchanger of a slot: one XfrBlock per block.
type t1Link struct{ s *slot }

// Exchange implements t1.Exchanger. A mute card or a parity error the
// reader reports while the card stays active, and a reader that did not
// answer in time, become t1.ErrNoBlock / t1.ErrParity so the block
// protocol retransmits.
func (x t1Link) Exchange(ctx context.Context, block []byte, bwi byte) ([]byte, error) {
	timeout := x.s.timeout
	if bwi > 1 {
		timeout *= time.Duration(bwi)
	}
	r, err := x.s.xfr(ctx, bwi, 0, block, timeout)
	if err == nil {
		return r.Data, nil
	}
	var se *SlotError
	switch {
	case errors.As(err, &se) && se.Failed && se.ICC() == ICCActive && se.Code == 0xFE:
		return nil, fmt.Errorf("%w: %w", t1.ErrNoBlock, err)
	case errors.As(err, &se) && se.Failed && se.ICC() == ICCActive && se.Code == 0xFD:
		return nil, fmt.Errorf("%w: %w", t1.ErrParity, err)
	case errors.Is(err, ErrTimeout) && ctx.Err() == nil && x.s.l.ctx.Err() == nil:
		return nil, fmt.Errorf("%w: %w", t1.ErrNoBlock, err)
	}
	return nil, err
}

// xfr sends one XfrBlock. A failed command, or a card that is no longer
// active, becomes a *SlotError; the monitor is asked to look at the
// slot then.
func (s *slot) xfr(ctx context.Context, bwi byte, level uint16, data []byte, timeout time.Duration) (Message, error) {
	if max := s.l.maxCommand(); HeaderLen+len(data) > max {
		return Message{}, fmt.Errorf("ccid: %s: %w: a block of %d bytes exceeds the reader's %d-byte messages",
			s.name, ErrUnsupported, len(data), max)
	}
	r, err := s.l.transact(ctx, s.bSlot, XfrBlock(bwi, level, data), timeout)
	if err != nil {
		return r, err
	}
	if r.Failed() || r.ICC() != ICCActive {
		e := s.slotErr(PCToRDRXfrBlock, r)
		if r.ICC() != ICCActive {
			s.powered, s.t1 = false, nil
			s.recheck.Store(true)
		}
		return r, e
	}
	return r, nil
}
