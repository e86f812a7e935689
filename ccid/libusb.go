//go:build cgo

package ccid

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/gousb"

	"github.com/wsrc-go/wsrc/ccid/internal/usbio"
)

// This file is the thin gousb adapter behind the usbio seam. It is the
// only code that needs libusb (and cgo); it is exercised by the QEMU
// end-to-end test, not by unit tests.

// libusbControlTimeout bounds control transfers (gousb has no context
// for them).
const libusbControlTimeout = 2 * time.Second

// libusbBus lists and opens devices, each time through a fresh libusb
// context. A context's device list is kept current only by udev's
// events (libusb's udev backend): where no udevd runs — a container
// given /dev/bus/usb, a minimal system, the test VM — a context made
// before a reader was plugged in never lists it, even when our netlink
// watch (which hears the kernel's own events) triggers a rescan. Found
// by the reader lab (test/gadget, TestGadgetReplug). libusb_init
// enumerates sysfs afresh; an opened device keeps its context until it
// is closed. Scans are rare (hotplug, and every RescanInterval).
type libusbBus struct {
	log *slog.Logger
}

func newLibusbBus(log *slog.Logger) (usbio.Bus, error) {
	c, err := newGousbContext()
	if err != nil {
		return nil, err
	}
	c.Close()
	return &libusbBus{log: log}, nil
}

// newGousbContext returns a new libusb context.
func newGousbContext() (c *gousb.Context, err error) {
	defer func() {
		if r := recover(); r != nil { // gousb.NewContext panics when libusb_init fails
			c, err = nil, fmt.Errorf("initialising libusb: %v", r)
		}
	}()
	return gousb.NewContext(), nil
}

func portOf(d *gousb.DeviceDesc) string {
	if len(d.Path) == 0 {
		return strconv.Itoa(d.Bus) + "-0"
	}
	p := make([]string, len(d.Path))
	for i, n := range d.Path {
		p[i] = strconv.Itoa(n)
	}
	return strconv.Itoa(d.Bus) + "-" + strings.Join(p, ".")
}

func idOf(d *gousb.DeviceDesc) string {
	return fmt.Sprintf("usb:%s@%d", portOf(d), d.Address)
}

func (b *libusbBus) Devices() ([]usbio.DeviceInfo, error) {
	c, err := newGousbContext()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	var out []usbio.DeviceInfo
	_, err = c.OpenDevices(func(d *gousb.DeviceDesc) bool {
		info := usbio.DeviceInfo{ID: idOf(d), Port: portOf(d), VendorID: uint16(d.Vendor), ProductID: uint16(d.Product)}
		for _, c := range d.Configs {
			for _, it := range c.Interfaces {
				for _, alt := range it.AltSettings {
					info.InterfaceClasses = append(info.InterfaceClasses, uint8(alt.Class))
				}
			}
		}
		out = append(out, info)
		return false
	})
	return out, mapLibusbErr(err)
}

func (b *libusbBus) Open(id string) (usbio.Device, error) {
	c, err := newGousbContext()
	if err != nil {
		return nil, err
	}
	devs, err := c.OpenDevices(func(d *gousb.DeviceDesc) bool { return idOf(d) == id })
	if len(devs) == 0 {
		c.Close()
		if err == nil {
			err = usbio.ErrNoDevice
		}
		return nil, mapLibusbErr(err)
	}
	for _, d := range devs[1:] {
		d.Close()
	}
	d := devs[0]
	d.ControlTimeout = libusbControlTimeout
	return &libusbDevice{d: d, ctx: c}, nil
}

func (b *libusbBus) Watch(ctx context.Context, changed chan<- struct{}) error {
	return watchUevents(ctx, changed, b.log)
}

func (b *libusbBus) Close() error { return nil }

// libusbDevice is an opened device. mu guards the claimed configuration
// (which gousb allows once per device) and closed.
type libusbDevice struct {
	d   *gousb.Device
	ctx *gousb.Context // its own (see libusbBus), closed after it

	mu     sync.Mutex
	cfg    *gousb.Config
	claims int
	closed bool
}

func (d *libusbDevice) Config() ([]byte, error) {
	hdr := make([]byte, 9)
	if _, err := d.d.Control(0x80, 0x06, 0x0200, 0, hdr); err != nil {
		return nil, fmt.Errorf("GET_DESCRIPTOR(configuration): %w", mapLibusbErr(err))
	}
	total := int(hdr[2]) | int(hdr[3])<<8
	if total < 9 {
		return nil, fmt.Errorf("configuration descriptor says wTotalLength %d", total)
	}
	buf := make([]byte, total)
	n, err := d.d.Control(0x80, 0x06, 0x0200, 0, buf)
	if err != nil {
		return nil, fmt.Errorf("GET_DESCRIPTOR(configuration): %w", mapLibusbErr(err))
	}
	return buf[:n], nil
}

func (d *libusbDevice) Strings() (string, string, string) {
	m, _ := d.d.Manufacturer()
	p, _ := d.d.Product()
	s, _ := d.d.SerialNumber()
	return m, p, s
}

func (d *libusbDevice) Claim(iface, alt int, eps usbio.Endpoints) (usbio.Conn, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cfg == nil {
		num, err := d.d.ActiveConfigNum()
		if err != nil {
			return nil, mapLibusbErr(err)
		}
		if d.cfg, err = d.d.Config(num); err != nil {
			return nil, mapLibusbErr(err)
		}
	}
	intf, err := d.cfg.Interface(iface, alt)
	if err != nil {
		d.releaseCfgLocked()
		return nil, mapLibusbErr(err)
	}
	c := &libusbConn{dev: d, intf: intf}
	if c.in, err = intf.InEndpoint(int(eps.BulkIn & 0x0F)); err == nil {
		c.out, err = intf.OutEndpoint(int(eps.BulkOut & 0x0F))
	}
	if err == nil && eps.IntIn != 0 {
		c.intr, err = intf.InEndpoint(int(eps.IntIn & 0x0F))
	}
	if err != nil {
		intf.Close()
		d.releaseCfgLocked()
		return nil, err
	}
	d.claims++
	return c, nil
}

// releaseCfgLocked closes the configuration when no interface is claimed.
func (d *libusbDevice) releaseCfgLocked() {
	if d.claims == 0 && d.cfg != nil {
		d.cfg.Close()
		d.cfg = nil
	}
}

func (d *libusbDevice) Reset() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return usbio.ErrNoDevice
	}
	return mapLibusbErr(d.d.Reset())
}

// Close closes the device and its context, once; the interfaces must be
// released first.
func (d *libusbDevice) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	err := d.d.Close()
	if cerr := d.ctx.Close(); err == nil {
		err = cerr
	}
	return mapLibusbErr(err)
}

// libusbConn is a claimed interface. Its transfers hold mu shared and
// Close holds it exclusively, so no transfer reaches libusb after the
// interface (and then the device and its context) is released: a command
// racing with the reader's removal gets ErrNoDevice instead of a libusb
// call on a closed handle, which crashed the agent (SIGSEGV in
// libusb_submit_transfer, seen in the reader lab's full-stack test).
// Close waits for transfers in flight; the link cancels them first.
type libusbConn struct {
	dev      *libusbDevice
	intf     *gousb.Interface
	in, intr *gousb.InEndpoint
	out      *gousb.OutEndpoint

	mu     sync.RWMutex
	closed bool // guarded by mu
}

// use admits one transfer; call the returned function when it is done.
func (c *libusbConn) use() (func(), error) {
	c.mu.RLock()
	if c.closed {
		c.mu.RUnlock()
		return nil, fmt.Errorf("interface released: %w", usbio.ErrNoDevice)
	}
	return c.mu.RUnlock, nil
}

func (c *libusbConn) BulkOut(ctx context.Context, msg []byte, timeout time.Duration) error {
	done, err := c.use()
	if err != nil {
		return err
	}
	defer done()
	tctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	n, err := c.out.WriteContext(tctx, msg)
	if err != nil {
		if ctx.Err() == nil && tctx.Err() != nil {
			return usbio.ErrTimeout
		}
		return mapCtxErr(ctx, err)
	}
	if n != len(msg) {
		return fmt.Errorf("short bulk-out write: %d of %d bytes", n, len(msg))
	}
	return nil
}

func (c *libusbConn) BulkIn(ctx context.Context, buf []byte, timeout time.Duration) (int, error) {
	done, err := c.use()
	if err != nil {
		return 0, err
	}
	defer done()
	tctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	n, err := c.in.ReadContext(tctx, buf)
	if err != nil {
		if ctx.Err() == nil && tctx.Err() != nil {
			return n, usbio.ErrTimeout
		}
		return n, mapCtxErr(ctx, err)
	}
	return n, nil
}

func (c *libusbConn) InterruptIn(ctx context.Context, buf []byte) (int, error) {
	if c.intr == nil {
		return 0, fmt.Errorf("no interrupt endpoint: %w", usbio.ErrUnsupported)
	}
	done, err := c.use()
	if err != nil {
		return 0, err
	}
	defer done()
	n, err := c.intr.ReadContext(ctx, buf)
	if err != nil {
		return n, mapCtxErr(ctx, err)
	}
	return n, nil
}

func (c *libusbConn) Control(ctx context.Context, reqType, req uint8, value, index uint16, data []byte) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	done, err := c.use()
	if err != nil {
		return 0, err
	}
	defer done()
	n, err := c.dev.d.Control(reqType, req, value, index, data)
	return n, mapLibusbErr(err)
}

func (c *libusbConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	c.intf.Close()
	c.dev.mu.Lock()
	c.dev.claims--
	c.dev.releaseCfgLocked()
	c.dev.mu.Unlock()
	return nil
}

// mapCtxErr reports a cancelled transfer as ctx's error.
func mapCtxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil && errors.Is(err, gousb.TransferCancelled) {
		return ctx.Err()
	}
	return mapLibusbErr(err)
}

// mapLibusbErr wraps gousb errors with the usbio sentinels. gousb
// formats some errors with %v, so the text is matched as a fallback.
func mapLibusbErr(err error) error {
	if err == nil {
		return nil
	}
	var sentinel error
	switch {
	case errors.Is(err, gousb.ErrorBusy) || strings.Contains(err.Error(), gousb.ErrorBusy.Error()):
		sentinel = usbio.ErrBusy
	case errors.Is(err, gousb.ErrorAccess) || strings.Contains(err.Error(), gousb.ErrorAccess.Error()):
		sentinel = usbio.ErrAccess
	case errors.Is(err, gousb.ErrorNoDevice), errors.Is(err, gousb.TransferNoDevice),
		strings.Contains(err.Error(), gousb.ErrorNoDevice.Error()):
		sentinel = usbio.ErrNoDevice
	case errors.Is(err, gousb.ErrorTimeout), errors.Is(err, gousb.TransferTimedOut):
		sentinel = usbio.ErrTimeout
	case errors.Is(err, gousb.ErrorPipe), errors.Is(err, gousb.TransferStall):
		sentinel = usbio.ErrStall
	default:
		return err
	}
	return fmt.Errorf("%w: %w", sentinel, err)
}
