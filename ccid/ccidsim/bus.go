package ccidsim

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/wsrc-go/wsrc/ccid/internal/usbio"
)

// Bus is a simulated USB bus with hotplug: pass it as ccid.Options.Bus.
// Plug and Unplug add and remove readers and tell every Watch.
type Bus struct {
	mu       sync.Mutex
	readers  []*Reader                // plugged, in plug order; guarded by mu
	watchers map[chan<- struct{}]bool // guarded by mu
	next     int                      // device numbering; guarded by mu
	// NoHotplug makes Watch report that hotplug is unsupported, so the
	// driver must find readers by periodic rescans. Set before use.
	NoHotplug bool
}

// NewBus returns an empty bus.
func NewBus() *Bus { return &Bus{watchers: map[chan<- struct{}]bool{}} }

// Plug attaches a reader of profile p with empty slots.
func (b *Bus) Plug(p Profile) *Reader {
	b.mu.Lock()
	b.next++
	r := newReader(b, p, fmt.Sprintf("sim:%d", b.next), fmt.Sprintf("9-%d", b.next))
	b.readers = append(b.readers, r)
	b.mu.Unlock()
	b.notify()
	return r
}

// Unplug detaches r: its device and claimed interfaces fail with
// usbio.ErrNoDevice from now on.
func (b *Bus) Unplug(r *Reader) {
	b.mu.Lock()
	for i, x := range b.readers {
		if x == r {
			b.readers = append(b.readers[:i], b.readers[i+1:]...)
			break
		}
	}
	b.mu.Unlock()
	r.unplug()
	b.notify()
}

func (b *Bus) notify() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for ch := range b.watchers {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// Devices implements the bus seam.
func (b *Bus) Devices() ([]usbio.DeviceInfo, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]usbio.DeviceInfo, 0, len(b.readers))
	for _, r := range b.readers {
		info := usbio.DeviceInfo{ID: r.id, Port: r.port, VendorID: r.p.VendorID, ProductID: r.p.ProductID}
		for i := 0; i < r.p.interfaces(); i++ {
			info.InterfaceClasses = append(info.InterfaceClasses, 0x0B)
		}
		out = append(out, info)
	}
	return out, nil
}

// Open implements the bus seam.
func (b *Bus) Open(id string) (usbio.Device, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, r := range b.readers {
		if r.id == id {
			return r.open()
		}
	}
	return nil, fmt.Errorf("%s: %w", id, usbio.ErrNoDevice)
}

// Watch implements the bus seam.
func (b *Bus) Watch(ctx context.Context, changed chan<- struct{}) error {
	if b.NoHotplug {
		return fmt.Errorf("simulated bus: %w", usbio.ErrUnsupported)
	}
	b.mu.Lock()
	b.watchers[changed] = true
	b.mu.Unlock()
	<-ctx.Done()
	b.mu.Lock()
	delete(b.watchers, changed)
	b.mu.Unlock()
	return nil
}

// Close implements the bus seam.
func (b *Bus) Close() error { return nil }

// device is an opened Reader (one per Open).
type device struct {
	r      *Reader
	closed bool
}

func (d *device) Config() ([]byte, error) {
	if err := d.r.check(); err != nil {
		return nil, err
	}
	return d.r.p.configDescriptor(), nil
}

func (d *device) Strings() (string, string, string) {
	return d.r.p.Manufacturer, d.r.p.Name, d.r.id
}

func (d *device) Claim(iface, alt int, eps usbio.Endpoints) (usbio.Conn, error) {
	return d.r.claim(iface, alt, eps)
}

func (d *device) Reset() error {
	d.r.reset()
	return nil
}

func (d *device) Close() error {
	d.r.mu.Lock()
	defer d.r.mu.Unlock()
	if !d.closed {
		d.closed = true
		d.r.opens--
	}
	return nil
}

// conn is one claimed simulated interface.
//
// Ownership: bulkIn and intr are written by the reader's command
// handlers (and delayed-answer goroutines, tracked by wg) and read by
// the host's BulkIn/InterruptIn; closed ends all of them.
type conn struct {
	r      *Reader
	iface  int
	bulkIn chan []byte
	intr   chan []byte
	closed chan struct{}
	once   sync.Once
	timer  *time.Timer // BulkIn's, reused (one reader at a time)

	mu      sync.Mutex
	closing bool           // guarded by mu
	wg      sync.WaitGroup // delayed answers; Add under mu
}

// spawn runs f in a goroutine that Close waits for; false when the
// interface is being released.
func (c *conn) spawn(f func()) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return false
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		f()
	}()
	return true
}

func (c *conn) BulkOut(ctx context.Context, msg []byte, timeout time.Duration) error {
	if err := c.alive(); err != nil {
		return err
	}
	c.r.handle(c, append([]byte(nil), msg...))
	return nil
}

func (c *conn) BulkIn(ctx context.Context, buf []byte, timeout time.Duration) (int, error) {
	if err := c.alive(); err != nil {
		return 0, err
	}
	stall := c.r.bulkInStall()
	select {
	case <-stall:
		return 0, usbio.ErrStall
	default:
	}
	if c.timer == nil {
		c.timer = time.NewTimer(timeout)
	} else {
		c.timer.Reset(timeout)
	}
	t := c.timer
	defer t.Stop()
	select {
	case f := <-c.bulkIn:
		if len(f) > len(buf) {
			return 0, fmt.Errorf("bulk-in overflow: %d bytes for a %d-byte buffer", len(f), len(buf))
		}
		return copy(buf, f), nil
	case <-t.C:
		return 0, usbio.ErrTimeout
	case <-stall:
		return 0, usbio.ErrStall
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-c.closed:
		return 0, fmt.Errorf("interface released: %w", usbio.ErrNoDevice)
	case <-c.r.gone:
		return 0, usbio.ErrNoDevice
	}
}

func (c *conn) InterruptIn(ctx context.Context, buf []byte) (int, error) {
	if !c.r.p.Interrupt {
		return 0, fmt.Errorf("no interrupt endpoint: %w", usbio.ErrUnsupported)
	}
	select {
	case f := <-c.intr:
		return copy(buf, f), nil
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-c.closed:
		return 0, usbio.ErrNoDevice
	case <-c.r.gone:
		return 0, usbio.ErrNoDevice
	}
}

func (c *conn) Control(ctx context.Context, reqType, req uint8, value, index uint16, data []byte) (int, error) {
	if err := c.alive(); err != nil {
		return 0, err
	}
	return c.r.control(c, reqType, req, value, data)
}

func (c *conn) Close() error {
	c.once.Do(func() {
		c.mu.Lock()
		c.closing = true
		c.mu.Unlock()
		close(c.closed)
		c.wg.Wait()
		c.r.release(c)
	})
	return nil
}

func (c *conn) alive() error {
	select {
	case <-c.closed:
		return fmt.Errorf("interface released: %w", usbio.ErrNoDevice)
	default:
	}
	return c.r.check()
}

// send queues a bulk-in message for the host; it gives up when the
// interface is released.
func (c *conn) send(msg []byte) {
	select {
	case c.bulkIn <- msg:
	case <-c.closed:
	case <-c.r.gone:
	}
}

// notify queues an interrupt message; a full queue keeps the oldest
// (a real reader coalesces, the host re-checks anyway).
func (c *conn) notify(msg []byte) {
	select {
	case c.intr <- msg:
	default:
	}
}
