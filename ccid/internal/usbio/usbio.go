// Package usbio is the seam between the CCID driver and USB: a bus that
// lists and opens devices and reports hotplug, a device whose interfaces
// can be claimed, and a claimed interface with its bulk and interrupt
// endpoints and the control pipe. Package ccid implements it over gousb
// (libusb) and netlink; package ccidsim implements it with simulated
// readers. Nothing outside the ccid tree can import it, but callers can
// hand a ccidsim bus to ccid.Options without naming these types.
//
// Everything above this seam (descriptors, framing, exchange levels,
// events) is pure Go and tested without USB.
package usbio

import (
	"context"
	"errors"
	"time"
)

// Errors an implementation returns (wrapped) so the driver can tell the
// cases apart.
var (
	// ErrBusy: the interface is claimed by another process (pcscd).
	ErrBusy = errors.New("interface claimed by another process")
	// ErrAccess: no permission to open the device.
	ErrAccess = errors.New("permission denied")
	// ErrTimeout: a transfer timed out.
	ErrTimeout = errors.New("USB transfer timed out")
	// ErrNoDevice: the device is gone (unplugged).
	ErrNoDevice = errors.New("USB device gone")
	// ErrStall: the endpoint stalled or the control request is not
	// supported.
	ErrStall = errors.New("USB endpoint stalled")
	// ErrUnsupported: the bus cannot report hotplug events.
	ErrUnsupported = errors.New("not supported")
)

// DeviceInfo describes a device found by Bus.Devices without opening it.
type DeviceInfo struct {
	// ID identifies this attachment of the device: it changes when the
	// device is unplugged and plugged again.
	ID string
	// Port is the physical port path ("1-1.2"), stable across replugs
	// in the same port; used in reader names.
	Port                string
	VendorID, ProductID uint16
	// InterfaceClasses lists bInterfaceClass of every interface of the
	// active configuration, for a cheap first filter.
	InterfaceClasses []uint8
}

// Bus finds and opens USB devices.
type Bus interface {
	// Devices lists the devices present now. It must be cheap: the
	// driver calls it on every hotplug event and periodic rescan.
	Devices() ([]DeviceInfo, error)
	// Open opens the device with the given DeviceInfo.ID.
	Open(id string) (Device, error)
	// Watch blocks until ctx is done, sending on changed (without
	// blocking: a full channel already says "rescan") whenever devices
	// may have been added or removed. It returns ErrUnsupported (wrapped)
	// at once when the bus cannot tell; the driver then relies on
	// periodic rescans.
	Watch(ctx context.Context, changed chan<- struct{}) error
	// Close releases the bus.
	Close() error
}

// Device is an opened USB device.
type Device interface {
	// Config returns the raw active configuration descriptor: the
	// configuration descriptor followed by every interface, endpoint and
	// class-specific descriptor, as GET_DESCRIPTOR returns it.
	Config() ([]byte, error)
	// Strings returns the manufacturer, product and serial number
	// strings ("" when absent or unreadable).
	Strings() (manufacturer, product, serial string)
	// Claim claims interface iface (alternate setting alt) with the
	// given endpoint addresses. It returns ErrBusy (wrapped) when
	// another process holds it.
	Claim(iface, alt int, eps Endpoints) (Conn, error)
	// Reset resets the USB port (after every Conn is closed); the
	// device re-enumerates.
	Reset() error
	// Close closes the device (after every Conn is closed).
	Close() error
}

// Endpoints are the endpoint addresses of a CCID interface. IntIn is 0
// when the interface has no interrupt endpoint.
type Endpoints struct {
	BulkIn, BulkOut, IntIn uint8
}

// Conn is one claimed interface. BulkOut and BulkIn may be called
// concurrently with each other and with InterruptIn and Control, but
// each of them by one goroutine at a time.
type Conn interface {
	// BulkOut writes one whole message to the bulk-out endpoint,
	// failing with ErrTimeout (wrapped) when the device has not taken it
	// within timeout.
	BulkOut(ctx context.Context, msg []byte, timeout time.Duration) error
	// BulkIn reads one transfer from the bulk-in endpoint into buf,
	// returning ErrTimeout (wrapped) after timeout with nothing read.
	BulkIn(ctx context.Context, buf []byte, timeout time.Duration) (int, error)
	// InterruptIn reads one transfer from the interrupt endpoint,
	// blocking until data arrives or ctx is done.
	InterruptIn(ctx context.Context, buf []byte) (int, error)
	// Control does a control transfer on the default pipe; data is
	// written (host to device) or filled (device to host) according to
	// the direction bit of reqType.
	Control(ctx context.Context, reqType, req uint8, value, index uint16, data []byte) (int, error)
	// Close releases the interface. Pending transfers return errors.
	Close() error
}
