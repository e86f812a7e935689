package ccid

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/ccid/internal/usbio"
)

// ClaimStatus is the outcome of taking a reader, tri-state as in
// periph.io's driver registry.
type ClaimStatus int

const (
	// Claimed: the driver owns the reader.
	Claimed ClaimStatus = iota
	// Skipped: deliberately not used; Reason says why (claimed by pcscd,
	// character-level exchange).
	Skipped
	// Failed: should have worked but did not; Reason is the error.
	Failed
)

func (s ClaimStatus) String() string {
	switch s {
	case Claimed:
		return "claimed"
	case Skipped:
		return "skipped"
	case Failed:
		return "failed"
	}
	return fmt.Sprintf("ClaimStatus(%d)", int(s))
}

// ReaderInfo describes one USB device with CCID interfaces.
type ReaderInfo struct {
	// Name is the product name and the USB port, e.g. "OMNIKEY 3x21
	// Smart Card Reader [1-1.2]"; stable while the reader stays in its
	// port.
	Name string
	// ID identifies this attachment of the device (changes on replug).
	ID   string
	Port string
	// USB identity.
	VendorID, ProductID           uint16
	Manufacturer, Product, Serial string
	Status                        ClaimStatus
	Reason                        string // for Skipped and Failed
	// Interfaces lists the CCID interfaces; their slots are numbered
	// in this order.
	Interfaces []InterfaceInfo
	// Slots is filled by Driver.Readers for a claimed reader.
	Slots []SlotInfo
}

// InterfaceInfo describes one CCID interface of a reader.
type InterfaceInfo struct {
	Number     int
	Descriptor Descriptor
	// Level is the exchange level the driver uses (after quirks).
	Level ExchangeLevel
	// Interrupt tells whether card events come from the interrupt
	// endpoint (otherwise the slots are polled).
	Interrupt bool
}

// SlotInfo describes one slot at the time of Driver.Readers.
type SlotInfo struct {
	Index   int
	Present bool
	// Open powers up and opens the card present now (nil when none);
	// valid until the Driver is closed.
	Open func(ctx context.Context) (card.Card, error)
}

// NumSlots returns the number of slots over all interfaces.
func (r ReaderInfo) NumSlots() int {
	n := 0
	for _, it := range r.Interfaces {
		n += it.Descriptor.Slots()
	}
	return n
}

// Summary says in one line what the driver makes of the reader: exchange
// level, protocols, fastest rate and slots, e.g. "USB 076b:3031, extended
// APDU, T=0/T=1, max 412903 bit/s, 1 slot".
func (r ReaderInfo) Summary() string {
	parts := []string{fmt.Sprintf("USB %04x:%04x", r.VendorID, r.ProductID)}
	for _, it := range r.Interfaces {
		d := it.Descriptor
		parts = append(parts, fmt.Sprintf("%v, %s, max %d bit/s", it.Level, d.ProtocolNames(), d.MaxDataRate))
	}
	if n := r.NumSlots(); n == 1 {
		parts = append(parts, "1 slot")
	} else if n > 1 {
		parts = append(parts, fmt.Sprintf("%d slots", n))
	}
	return strings.Join(parts, ", ")
}

// quirk overrides what a reader's descriptor says (libccid
// ccid_open_hack_post and friends).
type quirk struct {
	level       ExchangeLevel // forced exchange level, or LevelInvalid for none
	maxRate     uint32        // cap on the data rate, 0 for none
	noPPS       bool          // never negotiate the speed
	description string
}

var quirks = map[[2]uint16]quirk{
	// Claim a PIN pad they lack; the firmware chains: force extended APDU.
	{0x076b, 0x3a21}: {level: LevelExtendedAPDU, description: "HID AVIATOR"},
	{0x076b, 0x3031}: {level: LevelExtendedAPDU, description: "OMNIKEY 3x21"},
	{0x076b, 0x6632}: {level: LevelExtendedAPDU, description: "OMNIKEY 6121"},
	{0x046a, 0x00a7}: {level: LevelExtendedAPDU, description: "Cherry XX44"},
	{0x0bf8, 0x1024}: {level: LevelExtendedAPDU, description: "Fujitsu D323"},
	// Does not support extended APDUs.
	{0x0d46, 0x3010}: {level: LevelShortAPDU, description: "Kobil TriBank"},
	// Capped at 9600 bit/s, no PPS.
	{0x0b97, 0x7762}: {level: LevelInvalid, maxRate: 9600, noPPS: true, description: "O2Micro OZ776"},
	{0x0b97, 0x7772}: {level: LevelInvalid, maxRate: 9600, noPPS: true, description: "O2Micro OZ776"},
	// Hardware errors above ~200 kbit/s.
	{0x058f, 0x9540}: {level: LevelInvalid, maxRate: 200000, description: "AlcorMicro AU9540"},
	{0x058f, 0x9560}: {level: LevelInvalid, maxRate: 200000, description: "AlcorMicro AU9560"},
}

// applyQuirks adjusts a descriptor for a known reader.
func applyQuirks(vid, pid uint16, d Descriptor) Descriptor {
	q, ok := quirks[[2]uint16{vid, pid}]
	if !ok {
		return d
	}
	if q.level != LevelInvalid {
		d.Features = d.Features&^exchangeMask | Features(0x10000<<uint(q.level-LevelTPDU))
		d.PINSupport = 0
	}
	if q.maxRate != 0 && d.MaxDataRate > q.maxRate {
		d.MaxDataRate = q.maxRate
	}
	if q.noPPS {
		d.Features |= FeatureAutoPPSProp
	}
	return d
}

// readerName builds the user-facing name.
func readerName(info usbio.DeviceInfo, product string) string {
	if product == "" {
		if n, ok := vendorReaders[[2]uint16{info.VendorID, info.ProductID}]; ok {
			product = n
		} else {
			product = fmt.Sprintf("CCID reader %04x:%04x", info.VendorID, info.ProductID)
		}
	}
	if info.Port == "" {
		return product
	}
	return fmt.Sprintf("%s [%s]", product, info.Port)
}

// reader is one claimed device: its links, slots and monitors.
//
// Ownership: the Driver's scan owns the reader; monitors run in
// goroutines started by start and stopped (and waited for) by close.
type reader struct {
	info  ReaderInfo
	dev   usbio.Device
	links []*link
	mons  []*monitor
	slots []*slot // all slots, reader-wide index

	cancel context.CancelFunc
	wg     sync.WaitGroup
	dead   chan struct{} // closed when any link stops
}

// openReader opens and claims a device. It returns the reader (nil
// unless claimed) and its info with the claim outcome.
func openReader(bus usbio.Bus, info usbio.DeviceInfo, o *Options, log *slog.Logger) (*reader, ReaderInfo) {
	ri := ReaderInfo{ID: info.ID, Port: info.Port, VendorID: info.VendorID, ProductID: info.ProductID,
		Name: readerName(info, "")}
	dev, err := bus.Open(info.ID)
	if err != nil {
		ri.Status, ri.Reason = Failed, fmt.Sprintf("opening: %v", err)
		if errors.Is(err, usbio.ErrAccess) {
			ri.Reason += " (run as a member of the group that owns CCID devices, e.g. pcscd with libccid's udev rules)"
		}
		return nil, ri
	}
	ri.Manufacturer, ri.Product, ri.Serial = dev.Strings()
	ri.Name = readerName(info, ri.Product)
	if o.ReaderFilter != nil {
		if why := o.ReaderFilter(ri.Name); why != "" {
			dev.Close()
			ri.Status, ri.Reason = Skipped, why
			return nil, ri
		}
	}
	raw, err := dev.Config()
	if err != nil {
		dev.Close()
		ri.Status, ri.Reason = Failed, fmt.Sprintf("reading the configuration descriptor: %v", err)
		return nil, ri
	}
	ifs, err := parseConfig(raw)
	var found []ccidInterface
	var errs []error
	if err == nil {
		found, errs = findCCID(ifs, info.VendorID, info.ProductID)
	} else {
		errs = append(errs, err)
	}
	var usable []ccidInterface
	var skipped []string
	for _, ci := range found {
		ci.Desc = applyQuirks(info.VendorID, info.ProductID, ci.Desc)
		lvl := ci.Desc.Features.ExchangeLevel()
		ri.Interfaces = append(ri.Interfaces, InterfaceInfo{Number: ci.Number, Descriptor: ci.Desc, Level: lvl,
			Interrupt: ci.Endpoints.IntIn != 0})
		switch {
		case ci.Protocol != 0:
			skipped = append(skipped, fmt.Sprintf("interface %d: ICCD (bInterfaceProtocol %d) is not supported",
				ci.Number, ci.Protocol))
			continue
		case lvl == LevelCharacter || lvl == LevelInvalid:
			skipped = append(skipped, fmt.Sprintf("interface %d: %v exchange is not supported", ci.Number, lvl))
			continue
		}
		usable = append(usable, ci)
	}
	if len(usable) == 0 {
		dev.Close()
		switch {
		case len(skipped) > 0:
			ri.Status, ri.Reason = Skipped, strings.Join(skipped, "; ")
		default:
			ri.Status, ri.Reason = Failed, errors.Join(errs...).Error()
		}
		return nil, ri
	}
	ri.Interfaces = ri.Interfaces[:0]
	r := &reader{dev: dev, dead: make(chan struct{})}
	for _, ci := range usable {
		conn, err := dev.Claim(ci.Number, ci.Alt, ci.Endpoints)
		if err != nil {
			r.closeLinks()
			dev.Close()
			if errors.Is(err, usbio.ErrBusy) {
				ri.Status, ri.Reason = Skipped, busyReason
			} else {
				ri.Status, ri.Reason = Failed, fmt.Sprintf("claiming interface %d: %v", ci.Number, err)
			}
			return nil, ri
		}
		lvl := ci.Desc.Features.ExchangeLevel()
		l := newLink(ri.Name, ci, conn, log)
		l.fetchDataRates()
		r.links = append(r.links, l)
		var ls []*slot
		for b := 0; b < ci.Desc.Slots(); b++ {
			s := newSlot(l, b, len(r.slots), ri.Name, lvl, o.Voltages, log)
			r.slots = append(r.slots, s)
			ls = append(ls, s)
		}
		r.mons = append(r.mons, newMonitor(l, ls, ci, o.PollInterval, nil, log))
		ri.Interfaces = append(ri.Interfaces, InterfaceInfo{Number: ci.Number, Descriptor: ci.Desc, Level: lvl,
			Interrupt: ci.Endpoints.IntIn != 0})
	}
	ri.Status = Claimed
	if len(skipped) > 0 {
		ri.Reason = strings.Join(skipped, "; ")
	}
	r.info = ri
	return r, ri
}

// start runs the monitors; emit receives their events, onDead is
// called once when a link stops.
func (r *reader) start(emit func(context.Context, slotEvent), onDead func()) {
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	for _, m := range r.mons {
		m.emit = emit
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			m.run(ctx)
		}()
	}
	// Close dead when any link stops, so the driver can drop (and
	// reopen) the reader.
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		cases := make(chan struct{}, len(r.links))
		for _, l := range r.links {
			go func() {
				select {
				case <-l.done:
				case <-ctx.Done():
				}
				cases <- struct{}{}
			}()
		}
		<-cases
		if ctx.Err() == nil {
			close(r.dead)
			onDead()
		}
		for range len(r.links) - 1 {
			<-cases
		}
	}()
}

// hung reports whether a link stopped because the reader hung.
func (r *reader) hung() bool {
	for _, l := range r.links {
		l.errMu.Lock()
		err := l.err
		l.errMu.Unlock()
		if errors.Is(err, ErrReaderHung) {
			return true
		}
	}
	return false
}

// close stops the monitors, releases the interfaces (resetting a hung
// device) and closes the device.
func (r *reader) close() {
	if r.cancel != nil {
		r.cancel()
	}
	hung := r.hung()
	for _, l := range r.links {
		l.fail(ErrReaderGone)
	}
	r.wg.Wait()
	r.closeLinks()
	if hung {
		if err := r.dev.Reset(); err != nil {
			slog.Debug("ccid: resetting a hung reader", "reader", r.info.Name, "err", err)
		}
	}
	r.dev.Close()
}

func (r *reader) closeLinks() {
	for _, l := range r.links {
		l.close()
	}
}
