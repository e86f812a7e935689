// Package gadgetfs makes the calling program a USB device through the
// Linux GadgetFS file system (module gadgetfs), for the reader lab in the
// test VM: on dummy_hcd the same machine's host side enumerates it through
// the real USB stack. See shared/ccid/gadget.md for the facts it rests on.
//
// Protocol of the files (kernel drivers/usb/gadget/legacy/inode.c):
//
//   - /dev/gadget/<udc> (ep0): one write of u32 0, the full-speed
//     configuration descriptor and the device descriptor registers the
//     device; reads return 12-byte events (CONNECT, DISCONNECT, SETUP,
//     SUSPEND). A SETUP with an IN data stage is answered by writing the
//     data, one without data is acknowledged by a zero-length read; the
//     wrong direction stalls it.
//   - /dev/gadget/<ep> (ep1in-bulk, ...): after the host's
//     SET_CONFIGURATION, one write of u32 1 and the endpoint descriptor
//     enables it; then read and write are transfers.
//   - Closing ep0 unregisters the device: the host sees a disconnect.
//     A read blocked on ep0 or an endpoint holds its file open, so a
//     program unplugs the device by exiting (the kernel ends the blocked
//     calls); Close is for a device whose Run has returned.
//
// The blocking reads and writes use raw file descriptors: os.File skips
// zero-length reads, which are the acknowledgement. They are retried on
// EINTR (os.File would do that too).
package gadgetfs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"unicode/utf16"
)

// Event types of usb_gadgetfs_event.
const (
	eventNop        = 0
	eventConnect    = 1
	eventDisconnect = 2
	eventSetup      = 3
	eventSuspend    = 4
	eventSize       = 12
)

// Setup is a control request (struct usb_ctrlrequest).
type Setup struct {
	RequestType, Request uint8
	Value, Index, Length uint16
}

// In reports whether the request has a device-to-host data stage.
func (s Setup) In() bool { return s.RequestType&0x80 != 0 }

func (s Setup) String() string {
	return fmt.Sprintf("%02X %02X %04X %04X %04X", s.RequestType, s.Request, s.Value, s.Index, s.Length)
}

// ErrStall is returned by a Handler to stall a request.
var ErrStall = errors.New("gadgetfs: stall")

// Config describes the device.
type Config struct {
	// Dir is the GadgetFS mount point, default /dev/gadget (mounted by
	// Open when nothing is mounted there).
	Dir string
	// UDC is the controller's file, default "dummy_udc".
	UDC string
	// Device is the 18-byte device descriptor.
	Device []byte
	// Config is the full-speed configuration descriptor (only full
	// speed is offered: 64-byte bulk packets, like most readers).
	Config []byte
	// Strings are the string descriptors by index (language 0409).
	Strings map[uint8]string
	// Endpoints are the endpoint files with their descriptors, in the
	// order Endpoint returns them.
	Endpoints []EndpointConfig
	// Class answers the class and vendor requests: the IN data (cut to
	// wLength here) or ErrStall; data holds an OUT request's data.
	Class func(s Setup, data []byte) ([]byte, error)
	// Configured is called when the host has set configuration 1 and
	// the endpoints are enabled; Deconfigured when that ends (host reset,
	// disconnect, configuration 0, Close). Both run on Run's goroutine.
	Configured   func(eps []*Endpoint)
	Deconfigured func()
	// Log receives one line per event; nil discards them.
	Log func(format string, args ...any)
}

// EndpointConfig is one endpoint file and its 7-byte descriptor.
type EndpointConfig struct {
	File string // e.g. "ep1in-bulk"
	Desc []byte
}

// Device is a registered gadget. Run serves ep0 until Close.
type Device struct {
	cfg  Config
	ep0  int
	eps  []*Endpoint // enabled endpoints while configured
	mu   sync.Mutex
	done bool
}

// Endpoint is an enabled endpoint file.
type Endpoint struct {
	fd   int
	Name string
	// MaxPacket is wMaxPacketSize.
	MaxPacket int
	once      sync.Once
}

// Read reads one transfer (at most len(p) bytes; a full-size packet
// buffer reads one packet).
func (e *Endpoint) Read(p []byte) (int, error) {
	n, err := read(e.fd, p)
	if err != nil {
		return 0, fmt.Errorf("%s: read: %w", e.Name, err)
	}
	return n, nil
}

// Write writes one transfer; a multiple of the packet size is followed
// by a zero-length packet, so the host's read ends there.
func (e *Endpoint) Write(p []byte) error {
	if _, err := write(e.fd, p); err != nil {
		return fmt.Errorf("%s: write: %w", e.Name, err)
	}
	if len(p) > 0 && e.MaxPacket > 0 && len(p)%e.MaxPacket == 0 {
		if _, err := write(e.fd, nil); err != nil {
			return fmt.Errorf("%s: zero-length packet: %w", e.Name, err)
		}
	}
	return nil
}

// Halt stalls the endpoint (GadgetFS: I/O in the wrong direction); the
// host's transfers on it fail with EPIPE until it clears the halt or
// resets the device.
func (e *Endpoint) Halt() error {
	var b [1]byte
	_, err := read(e.fd, b[:])
	if err == nil || errors.Is(err, syscall.EBADMSG) {
		return nil
	}
	return fmt.Errorf("%s: halt: %w", e.Name, err)
}

// read and write retry what a signal interrupted: the Go runtime
// signals its threads (preemption), and GadgetFS's blocking I/O returns
// EINTR then, with the request taken back.
func read(fd int, p []byte) (int, error) {
	for {
		n, err := syscall.Read(fd, p)
		if err != syscall.EINTR {
			return n, err
		}
	}
}

func write(fd int, p []byte) (int, error) {
	for {
		n, err := syscall.Write(fd, p)
		if err != syscall.EINTR {
			return n, err
		}
	}
}

func (e *Endpoint) close() { e.once.Do(func() { syscall.Close(e.fd) }) }

// Open mounts GadgetFS if needed and registers the device; the host
// enumerates it once Run serves ep0.
func Open(cfg Config) (*Device, error) {
	if cfg.Dir == "" {
		cfg.Dir = "/dev/gadget"
	}
	if cfg.UDC == "" {
		cfg.UDC = "dummy_udc"
	}
	if cfg.Log == nil {
		cfg.Log = func(string, ...any) {}
	}
	if len(cfg.Device) != 18 || len(cfg.Config) < 9 {
		return nil, errors.New("gadgetfs: bad device or configuration descriptor")
	}
	ep0path := filepath.Join(cfg.Dir, cfg.UDC)
	if _, err := os.Stat(ep0path); err != nil {
		if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
			return nil, err
		}
		if err := syscall.Mount("gadgetfs", cfg.Dir, "gadgetfs", 0, ""); err != nil && !errors.Is(err, syscall.EBUSY) {
			return nil, fmt.Errorf("gadgetfs: mount %s: %w", cfg.Dir, err)
		}
	}
	fd, err := syscall.Open(ep0path, syscall.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("gadgetfs: open %s: %w", ep0path, err)
	}
	buf := binary.LittleEndian.AppendUint32(nil, 0)
	buf = append(buf, cfg.Config...)
	buf = append(buf, cfg.Device...)
	if _, err := write(fd, buf); err != nil {
		syscall.Close(fd)
		return nil, fmt.Errorf("gadgetfs: writing the descriptors to %s: %w", ep0path, err)
	}
	return &Device{cfg: cfg, ep0: fd}, nil
}

// Run serves ep0 (enumeration, strings, class requests, configuration)
// until Close or an error.
func (d *Device) Run() error {
	defer d.deconfigure()
	buf := make([]byte, 5*eventSize)
	for {
		n, err := read(d.ep0, buf)
		if err != nil {
			if errors.Is(err, syscall.EAGAIN) {
				continue
			}
			if d.closed() {
				return nil
			}
			return fmt.Errorf("gadgetfs: ep0 read: %w", err)
		}
		for off := 0; off+eventSize <= n; off += eventSize {
			ev := buf[off : off+eventSize]
			switch binary.LittleEndian.Uint32(ev[8:]) {
			case eventConnect:
				d.cfg.Log("ep0: connect (speed %d)", binary.LittleEndian.Uint32(ev))
			case eventDisconnect:
				d.cfg.Log("ep0: disconnect")
				d.deconfigure()
			case eventSuspend:
				d.cfg.Log("ep0: suspend")
			case eventSetup:
				s := Setup{ev[0], ev[1], binary.LittleEndian.Uint16(ev[2:]), binary.LittleEndian.Uint16(ev[4:]), binary.LittleEndian.Uint16(ev[6:])}
				if err := d.setup(s); err != nil {
					d.cfg.Log("ep0: setup %v: %v", s, err)
				}
			case eventNop:
			}
		}
	}
}

func (d *Device) closed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.done
}

// setup answers one control request.
func (d *Device) setup(s Setup) error {
	typ := s.RequestType & 0x60
	switch {
	case typ == 0 && s.Request == 0x09 && s.RequestType == 0: // SET_CONFIGURATION
		if s.Value&0xFF == 1 && d.eps != nil {
			return d.ack() // configured already: keep the endpoints
		}
		d.deconfigure()
		if s.Value&0xFF == 1 {
			if err := d.configure(); err != nil {
				d.stall(s)
				return err
			}
		}
		return d.ack()
	case typ == 0 && s.Request == 0x06 && s.Value>>8 == 3: // GET_DESCRIPTOR string
		idx := uint8(s.Value)
		if idx == 0 {
			return d.reply(s, []byte{4, 3, 0x09, 0x04})
		}
		str, ok := d.cfg.Strings[idx]
		if !ok {
			return d.stall(s)
		}
		u := utf16.Encode([]rune(str))
		b := []byte{byte(2 + 2*len(u)), 3}
		for _, c := range u {
			b = binary.LittleEndian.AppendUint16(b, c)
		}
		return d.reply(s, b)
	case typ == 0:
		// SET_INTERFACE, CLEAR_FEATURE (halt), ...: nothing to do.
		if s.In() {
			return d.stall(s)
		}
		return d.ack()
	}
	var out []byte
	if !s.In() && s.Length > 0 {
		out = make([]byte, s.Length)
		n, err := read(d.ep0, out)
		if err != nil {
			return fmt.Errorf("reading the data stage: %w", err)
		}
		out = out[:n]
	}
	if d.cfg.Class == nil {
		return d.stall(s)
	}
	in, err := d.cfg.Class(s, out)
	if err != nil {
		return d.stall(s)
	}
	if s.In() {
		return d.reply(s, in)
	}
	if s.Length > 0 {
		return nil // the data stage was the acknowledgement
	}
	return d.ack()
}

// reply writes an IN data stage, cut to wLength.
func (d *Device) reply(s Setup, b []byte) error {
	if len(b) > int(s.Length) {
		b = b[:s.Length]
	}
	_, err := write(d.ep0, b)
	return err
}

// ack completes a request without data stage.
func (d *Device) ack() error {
	_, err := read(d.ep0, nil)
	return err
}

// stall stalls the request: I/O in the wrong direction.
func (d *Device) stall(s Setup) error {
	var err error
	if s.In() {
		_, err = read(d.ep0, nil)
	} else {
		_, err = write(d.ep0, nil)
	}
	if err != nil && !errors.Is(err, syscall.EL2HLT) {
		return err
	}
	return nil
}

// configure enables the endpoints and tells the caller.
func (d *Device) configure() error {
	var eps []*Endpoint
	for _, e := range d.cfg.Endpoints {
		p := filepath.Join(d.cfg.Dir, e.File)
		fd, err := syscall.Open(p, syscall.O_RDWR|syscall.O_CLOEXEC, 0)
		if err != nil {
			closeAll(eps)
			return fmt.Errorf("open %s: %w", p, err)
		}
		ep := &Endpoint{fd: fd, Name: e.File, MaxPacket: int(binary.LittleEndian.Uint16(e.Desc[4:]))}
		eps = append(eps, ep)
		b := binary.LittleEndian.AppendUint32(nil, 1)
		if _, err := write(fd, append(b, e.Desc...)); err != nil {
			closeAll(eps)
			return fmt.Errorf("enabling %s: %w", p, err)
		}
	}
	d.eps = eps
	d.cfg.Log("ep0: configured, %d endpoints", len(eps))
	if d.cfg.Configured != nil {
		d.cfg.Configured(eps)
	}
	return nil
}

// deconfigure ends the configuration: the caller's Deconfigured first
// (it stops using the endpoints), then the files are closed.
func (d *Device) deconfigure() {
	if d.eps == nil {
		return
	}
	if d.cfg.Deconfigured != nil {
		d.cfg.Deconfigured()
	}
	closeAll(d.eps)
	d.eps = nil
}

func closeAll(eps []*Endpoint) {
	for _, e := range eps {
		e.close()
	}
}

// Close releases ep0 once Run has returned (see the package comment on
// unplugging a running device).
func (d *Device) Close() error {
	d.mu.Lock()
	if d.done {
		d.mu.Unlock()
		return nil
	}
	d.done = true
	d.mu.Unlock()
	return syscall.Close(d.ep0)
}
