// Package rawccid talks CCID to USB readers through usbfs with raw ioctls
// and nothing else: no libusb, no project driver code, no cgo. The QEMU
// test guests use it to prove the harness (usbapdu) and as the floor of
// the per-APDU benchmark (apdubench -stack usbfs): one synchronous bulk-out
// and one synchronous bulk-in per command, the least a host can do.
//
// It handles slot 0 of the first interface of class 0x0B per device, as
// QEMU's usb-ccid has; it is not a driver (no time extensions, no
// chaining, no T=0 GET RESPONSE).
package rawccid

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"unsafe"
)

// usbfs ioctls for a 64-bit kernel (<linux/usbdevice_fs.h>).
const (
	ioctlBulk             = 0xC0185502 // USBDEVFS_BULK
	ioctlClaimInterface   = 0x8004550F // USBDEVFS_CLAIMINTERFACE
	ioctlReleaseInterface = 0x80045510 // USBDEVFS_RELEASEINTERFACE
)

// CCID message types (CCID rev 1.1, section 6).
const (
	pcToRDRIccPowerOn = 0x62
	pcToRDRXfrBlock   = 0x6F
	rdrToPCDataBlock  = 0x80
	headerLen         = 10
)

// timeoutMS bounds each bulk transfer.
const timeoutMS = 10000

// Interface is one CCID interface found in sysfs.
type Interface struct {
	SysName         string // e.g. 1-1:1.0
	Bus, Dev        int
	Number          uint32
	BulkIn, BulkOut uint8
}

// Find lists the interfaces of class 0x0b under sys (normally
// /sys/bus/usb/devices) with their bulk endpoints, sorted by name.
func Find(sys string) ([]Interface, error) {
	dirs, _ := filepath.Glob(filepath.Join(sys, "*:*"))
	slices.Sort(dirs)
	var out []Interface
	for _, d := range dirs {
		if read(d, "bInterfaceClass") != "0b" {
			continue
		}
		name := filepath.Base(d)
		devDir := filepath.Join(sys, name[:strings.IndexByte(name, ':')])
		it := Interface{SysName: name}
		var err error
		if it.Bus, err = strconv.Atoi(read(devDir, "busnum")); err != nil {
			return nil, fmt.Errorf("%s busnum: %w", name, err)
		}
		if it.Dev, err = strconv.Atoi(read(devDir, "devnum")); err != nil {
			return nil, fmt.Errorf("%s devnum: %w", name, err)
		}
		n, err := strconv.ParseUint(read(d, "bInterfaceNumber"), 16, 8)
		if err != nil {
			return nil, fmt.Errorf("%s bInterfaceNumber: %w", name, err)
		}
		it.Number = uint32(n)
		eps, _ := filepath.Glob(filepath.Join(d, "ep_*"))
		for _, ep := range eps {
			addr, err := strconv.ParseUint(read(ep, "bEndpointAddress"), 16, 8)
			if err != nil || read(ep, "type") != "Bulk" {
				continue
			}
			if addr&0x80 != 0 {
				it.BulkIn = uint8(addr)
			} else {
				it.BulkOut = uint8(addr)
			}
		}
		if it.BulkIn == 0 || it.BulkOut == 0 {
			return nil, fmt.Errorf("%s: no bulk endpoints", name)
		}
		out = append(out, it)
	}
	return out, nil
}

func read(dir, name string) string {
	b, _ := os.ReadFile(filepath.Join(dir, name))
	return strings.TrimSpace(string(b))
}

// Reader is a claimed interface. It is not safe for concurrent use.
type Reader struct {
	it   Interface
	fd   int
	seq  byte
	out  []byte // reused bulk-out message
	in   []byte // bulk-in buffer
	atr  []byte
	open bool
}

// Open claims the interface through /dev/bus/usb and powers the card in
// slot 0 on. inBuf is the bulk-in buffer size (at least 64 bytes).
func Open(it Interface, inBuf int) (*Reader, error) {
	node := fmt.Sprintf("/dev/bus/usb/%03d/%03d", it.Bus, it.Dev)
	fd, err := syscall.Open(node, syscall.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	n := it.Number
	if err := ioctl(fd, ioctlClaimInterface, unsafe.Pointer(&n)); err != nil {
		syscall.Close(fd)
		return nil, fmt.Errorf("claiming interface %s: %w", it.SysName, err)
	}
	r := &Reader{it: it, fd: fd, in: make([]byte, max(inBuf, 64)), open: true}
	if r.atr, err = r.Transact(pcToRDRIccPowerOn, nil); err != nil {
		r.Close()
		return nil, fmt.Errorf("IccPowerOn: %w", err)
	}
	r.atr = slices.Clone(r.atr)
	return r, nil
}

// ATR is the card's answer to the power-on.
func (r *Reader) ATR() []byte { return r.atr }

// XfrBlock sends data in an XfrBlock and returns the DataBlock's data,
// valid until the next call.
func (r *Reader) XfrBlock(data []byte) ([]byte, error) { return r.Transact(pcToRDRXfrBlock, data) }

// Transact sends one CCID command of type typ to slot 0 and returns the
// data of its DataBlock answer, valid until the next call.
func (r *Reader) Transact(typ byte, data []byte) ([]byte, error) {
	if !r.open {
		return nil, errors.New("rawccid: reader closed")
	}
	seq := r.seq
	r.seq++
	msg := append(r.out[:0], typ, 0, 0, 0, 0, 0, seq, 0, 0, 0)
	binary.LittleEndian.PutUint32(msg[1:], uint32(len(data)))
	msg = append(msg, data...)
	r.out = msg
	if _, err := bulk(r.fd, r.it.BulkOut, msg); err != nil {
		return nil, fmt.Errorf("bulk out: %w", err)
	}
	got, err := bulk(r.fd, r.it.BulkIn, r.in)
	if err != nil {
		return nil, fmt.Errorf("bulk in: %w", err)
	}
	b := r.in[:got]
	if len(b) < headerLen || b[0] != rdrToPCDataBlock || b[6] != seq {
		return nil, fmt.Errorf("unexpected answer % X", b)
	}
	if b[7]&0x40 != 0 {
		return nil, fmt.Errorf("command failed: bStatus %02X bError %02X", b[7], b[8])
	}
	n := int(binary.LittleEndian.Uint32(b[1:]))
	if headerLen+n > len(b) {
		return nil, fmt.Errorf("short answer: dwLength %d, %d bytes", n, len(b))
	}
	return b[headerLen : headerLen+n], nil
}

// Close releases the interface and closes the device node.
func (r *Reader) Close() error {
	if !r.open {
		return nil
	}
	r.open = false
	n := r.it.Number
	err := ioctl(r.fd, ioctlReleaseInterface, unsafe.Pointer(&n))
	if cerr := syscall.Close(r.fd); err == nil {
		err = cerr
	}
	return err
}

// bulkTransfer is struct usbdevfs_bulktransfer.
type bulkTransfer struct {
	ep, len, timeout, _ uint32
	data                unsafe.Pointer
}

func bulk(fd int, ep uint8, b []byte) (int, error) {
	bt := bulkTransfer{ep: uint32(ep), len: uint32(len(b)), timeout: timeoutMS, data: unsafe.Pointer(&b[0])}
	r, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), ioctlBulk, uintptr(unsafe.Pointer(&bt)))
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

func ioctl(fd int, req uintptr, arg unsafe.Pointer) error {
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), req, uintptr(arg)); e != 0 {
		return e
	}
	return nil
}
