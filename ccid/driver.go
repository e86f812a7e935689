package ccid

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/ccid/internal/usbio"
)

// Defaults for Options.
const (
	// DefaultRescanInterval is the periodic rescan that backs up hotplug
	// events (and the only source of them where netlink is unavailable).
	DefaultRescanInterval = 10 * time.Second
	// DefaultPollInterval is the GetSlotStatus poll for readers without
	// an interrupt endpoint (pcscd's 400 ms).
	DefaultPollInterval = pollInterval
)

// hotplugSettle is how long the driver waits after a hotplug event for
// more to come (a device brings several) before it rescans; udev also
// needs this long to give the device its group.
var hotplugSettle = 300 * time.Millisecond

// Options configure a Driver. The zero value uses libusb and netlink.
type Options struct {
	// Bus is where readers are found: nil for libusb via gousb (builds
	// with cgo only) with netlink hotplug; a ccidsim bus in tests. A Bus
	// given here is not closed by the Driver.
	Bus usbio.Bus
	// Logger receives the driver's records; nil means slog.Default().
	Logger *slog.Logger
	// PollInterval is the presence poll for readers without an
	// interrupt endpoint; 0 means DefaultPollInterval.
	PollInterval time.Duration
	// RescanInterval is the periodic device rescan; 0 means
	// DefaultRescanInterval.
	RescanInterval time.Duration
	// Voltages is the power-on order for readers without automatic
	// voltage selection; nil means DefaultVoltages.
	Voltages []byte
	// ReaderFilter, when set, is asked about each reader's name (as in
	// ReaderInfo.Name) before the reader is claimed. A non-empty reason
	// leaves the reader alone: it is reported Skipped with that reason,
	// never claimed (so pcscd may take it) and not retried while it stays
	// plugged in. The agent passes its --reader-include/--reader-exclude
	// patterns here (pcsc.Filter.Why), so both backends select readers
	// alike.
	ReaderFilter func(name string) (reason string)
}

// EventKind tells what an Event reports.
type EventKind int

const (
	// ReaderAdded: a reader was found (or its claim outcome changed);
	// Reader.Status says whether the driver took it.
	ReaderAdded EventKind = iota
	// ReaderRemoved: a claimed reader went away (its CardRemoved events
	// come first).
	ReaderRemoved
	// CardInserted: a card is present in Slot; Open powers it up.
	CardInserted
	// CardRemoved: the card in Slot is gone; its handle fails with
	// card.ErrRemoved.
	CardRemoved
)

func (k EventKind) String() string {
	switch k {
	case ReaderAdded:
		return "reader added"
	case ReaderRemoved:
		return "reader removed"
	case CardInserted:
		return "card inserted"
	case CardRemoved:
		return "card removed"
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// Event is a change the Driver reports.
type Event struct {
	Kind   EventKind
	Reader ReaderInfo
	// Slot is the slot number in the reader (card events).
	Slot int
	// Open powers up the inserted card and returns it (CardInserted
	// only). It fails with card.ErrRemoved when that card is gone
	// already. Call it from the goroutine that will own the card.
	Open func(ctx context.Context) (card.Card, error)
}

// Driver owns the CCID readers of one bus.
//
// Ownership: scans (Run's loop, or Readers when Run is not running)
// are serialised by scanMu and own the reader table's changes; mu
// guards the table and the event sink so Readers can take snapshots.
// Each claimed reader runs its own goroutines (bulk-in per interface,
// a monitor per interface); Close stops and waits for all of them.
type Driver struct {
	opts    Options
	bus     usbio.Bus
	ownsBus bool
	log     *slog.Logger
	changed chan struct{} // capacity 1: rescan soon

	scanMu sync.Mutex

	mu      sync.Mutex
	readers map[string]*entry // by DeviceInfo.ID; guarded by mu
	sink    *sink             // the running Run's events; guarded by mu
	closed  bool              // guarded by mu
}

// entry is one device the driver has seen.
type entry struct {
	info ReaderInfo
	r    *reader // nil unless claimed
	// retry: try again on the next scan (pcscd may let go, udev may
	// fix permissions); false for permanent verdicts.
	retry bool
}

type sink struct {
	ctx context.Context
	ch  chan<- Event
}

// New returns a Driver over opts.Bus (libusb when nil). It claims
// nothing until Run or Readers scans.
func New(opts Options) (*Driver, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = DefaultPollInterval
	}
	if opts.RescanInterval <= 0 {
		opts.RescanInterval = DefaultRescanInterval
	}
	if opts.Voltages == nil {
		opts.Voltages = DefaultVoltages
	}
	d := &Driver{opts: opts, bus: opts.Bus, log: opts.Logger, changed: make(chan struct{}, 1),
		readers: map[string]*entry{}}
	if d.bus == nil {
		b, err := newLibusbBus(d.log)
		if err != nil {
			return nil, fmt.Errorf("ccid: %w", err)
		}
		d.bus, d.ownsBus = b, true
	}
	return d, nil
}

// Watch runs a Driver over opts until ctx is done, sending every event
// to events, and releases every reader before it returns.
func Watch(ctx context.Context, opts Options, events chan<- Event) error {
	d, err := New(opts)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Run(ctx, events)
}

// Readers scans once and returns every reader found with its claim
// outcome and slots (without Open: the readers are released again).
func Readers(ctx context.Context, opts Options) ([]ReaderInfo, error) {
	d, err := New(opts)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	rs, err := d.Readers(ctx)
	for i := range rs {
		for j := range rs[i].Slots {
			rs[i].Slots[j].Open = nil
		}
	}
	return rs, err
}

// ErrRunning is returned by Run when another Run of the Driver is active.
var ErrRunning = errors.New("ccid: driver already running")

// Run watches for readers and cards until ctx is done, sending events
// to events (sends give up when ctx is done). It first reports the
// readers and cards already known, then scans on every hotplug event
// and every RescanInterval. Readers stay claimed after Run returns,
// until Close.
func (d *Driver) Run(ctx context.Context, events chan<- Event) error {
	d.mu.Lock()
	switch {
	case d.closed:
		d.mu.Unlock()
		return errors.New("ccid: driver closed")
	case d.sink != nil:
		d.mu.Unlock()
		return ErrRunning
	}
	d.sink = &sink{ctx: ctx, ch: events}
	known := d.snapshotLocked()
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.sink = nil
		d.mu.Unlock()
	}()

	wctx, cancel := context.WithCancel(ctx)
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		if err := d.bus.Watch(wctx, d.changed); err != nil && wctx.Err() == nil {
			d.log.Info("ccid: no hotplug events, rescanning periodically", "err", err, "interval", d.opts.RescanInterval)
		}
	}()
	defer func() { cancel(); <-watchDone }()

	for _, e := range known {
		d.send(ctx, Event{Kind: ReaderAdded, Reader: e.info})
		if e.r == nil {
			continue
		}
		for _, s := range e.r.slots {
			if s.present.Load() {
				d.send(ctx, d.cardEvent(e.info, slotEvent{s: s, present: true, gen: s.gen.Load()}))
			}
		}
	}
	d.scan(ctx)
	rescan := time.NewTicker(d.opts.RescanInterval)
	defer rescan.Stop()
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	defer settle.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-d.changed:
			settle.Reset(hotplugSettle)
		case <-settle.C:
			d.scan(ctx)
		case <-rescan.C:
			d.scan(ctx)
		}
	}
}

// Readers returns every reader the driver knows, claimed ones with
// their slots and Open functions (valid until Close). When Run is not
// running it scans first.
func (d *Driver) Readers(ctx context.Context) ([]ReaderInfo, error) {
	d.mu.Lock()
	running, closed := d.sink != nil, d.closed
	d.mu.Unlock()
	if closed {
		return nil, errors.New("ccid: driver closed")
	}
	if !running {
		d.scan(ctx)
	}
	d.mu.Lock()
	known := d.snapshotLocked()
	d.mu.Unlock()
	out := make([]ReaderInfo, 0, len(known))
	for _, e := range known {
		ri := e.info
		ri.Slots = nil
		if e.r != nil {
			if !running {
				e.r.waitInitial(ctx)
			}
			for _, s := range e.r.slots {
				si := SlotInfo{Index: s.index, Present: s.present.Load()}
				if si.Present {
					gen := s.gen.Load()
					si.Open = func(ctx context.Context) (card.Card, error) { return s.open(ctx, gen) }
				}
				ri.Slots = append(ri.Slots, si)
			}
		}
		out = append(out, ri)
	}
	return out, ctx.Err()
}

// Close releases every reader and the bus. Run must have returned.
func (d *Driver) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	d.mu.Unlock()
	d.scanMu.Lock()
	defer d.scanMu.Unlock()
	d.mu.Lock()
	known := d.readers
	d.readers = map[string]*entry{}
	d.mu.Unlock()
	for _, e := range known {
		if e.r != nil {
			e.r.close()
		}
	}
	if d.ownsBus {
		return d.bus.Close()
	}
	return nil
}

// snapshotLocked returns the entries sorted by name; mu is held.
func (d *Driver) snapshotLocked() []entry {
	out := make([]entry, 0, len(d.readers))
	for _, e := range d.readers {
		out = append(out, *e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].info.Name < out[j].info.Name })
	return out
}

// poke asks Run to rescan soon.
func (d *Driver) poke() {
	select {
	case d.changed <- struct{}{}:
	default:
	}
}

// send delivers an event to the running Run, if any.
func (d *Driver) send(ctx context.Context, ev Event) {
	d.mu.Lock()
	s := d.sink
	d.mu.Unlock()
	if s == nil {
		return
	}
	select {
	case s.ch <- ev:
	case <-s.ctx.Done():
	case <-ctx.Done():
	}
}

// cardEvent turns a monitor event into an Event.
func (d *Driver) cardEvent(info ReaderInfo, ev slotEvent) Event {
	e := Event{Kind: CardRemoved, Reader: info, Slot: ev.s.index}
	if ev.present {
		e.Kind = CardInserted
		s, gen := ev.s, ev.gen
		e.Open = func(ctx context.Context) (card.Card, error) { return s.open(ctx, gen) }
	}
	return e
}

// scan lists the devices and brings the reader table up to date:
// readers that are gone or dead are dropped (and a dead one still
// present is reopened), new devices are opened and claimed, and devices
// that were skipped or failed for a passing reason are tried again.
func (d *Driver) scan(ctx context.Context) {
	d.scanMu.Lock()
	defer d.scanMu.Unlock()
	d.mu.Lock()
	closed := d.closed
	d.mu.Unlock()
	if closed {
		return
	}
	devs, err := d.bus.Devices()
	if err != nil {
		d.log.Warn("ccid: listing USB devices", "err", err)
		return
	}
	present := map[string]usbio.DeviceInfo{}
	var order []string
	for _, info := range devs {
		if candidate(info) {
			present[info.ID] = info
			order = append(order, info.ID)
		}
	}
	d.mu.Lock()
	var drop []string
	for id, e := range d.readers {
		_, ok := present[id]
		if !ok || (e.r != nil && isClosed(e.r.dead)) {
			drop = append(drop, id)
		}
	}
	d.mu.Unlock()
	sort.Strings(drop)
	for _, id := range drop {
		d.drop(ctx, id)
	}
	for _, id := range order {
		d.mu.Lock()
		e := d.readers[id]
		d.mu.Unlock()
		if e == nil || (e.r == nil && e.retry) {
			d.add(ctx, present[id], e)
		}
	}
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// add opens a device and records (and reports) the outcome.
func (d *Driver) add(ctx context.Context, info usbio.DeviceInfo, prev *entry) {
	r, ri := openReader(d.bus, info, &d.opts, d.log)
	e := &entry{info: ri, r: r, retry: r == nil && !(ri.Status == Skipped && ri.Reason != busyReason)}
	d.mu.Lock()
	d.readers[info.ID] = e
	d.mu.Unlock()
	if prev != nil && prev.info.Status == ri.Status && prev.info.Reason == ri.Reason {
		return // still failing the same way: say nothing
	}
	switch ri.Status {
	case Claimed:
		d.log.Info("ccid: reader claimed", "reader", ri.Name, "summary", ri.Summary())
	default:
		d.log.Warn("ccid: reader not used", "reader", ri.Name, "status", ri.Status, "reason", ri.Reason)
	}
	d.send(ctx, Event{Kind: ReaderAdded, Reader: ri})
	if r != nil {
		r.start(func(ctx context.Context, ev slotEvent) { d.send(ctx, d.cardEvent(ri, ev)) }, d.poke)
	}
}

// busyReason is the Reason of a reader another process holds.
const busyReason = "claimed by another process (pcscd?)"

// drop removes a device from the table, reporting its cards and itself
// as removed, and releases it.
func (d *Driver) drop(ctx context.Context, id string) {
	d.mu.Lock()
	e := d.readers[id]
	delete(d.readers, id)
	d.mu.Unlock()
	if e == nil || e.r == nil {
		return
	}
	if e.r.hung() {
		d.log.Warn("ccid: reader hung, reopening it", "reader", e.info.Name)
	} else {
		d.log.Info("ccid: reader gone", "reader", e.info.Name)
	}
	e.r.close()
	for _, s := range e.r.slots {
		if s.present.Load() {
			s.gen.Add(1)
			s.present.Store(false)
			d.send(ctx, Event{Kind: CardRemoved, Reader: e.info, Slot: s.index})
		}
	}
	d.send(ctx, Event{Kind: ReaderRemoved, Reader: e.info})
}

// waitInitial waits until every monitor has done its first presence
// check, so Readers reports presence correctly right after a scan.
func (r *reader) waitInitial(ctx context.Context) {
	for _, m := range r.mons {
		select {
		case <-m.ready:
		case <-ctx.Done():
			return
		}
	}
}
