// Command usbapdu is the smallest guest program of the QEMU tests: it
// proves the harness without any project driver code. It finds the USB
// CCID interfaces in sysfs, opens each through usbfs with raw ioctls,
// powers the card on, sends one APDU (given in hex as the argument) in an
// XfrBlock and prints, per reader:
//
//	reader N atr <hex>
//	reader N resp <hex>
//
// It exits non-zero on any error. Linked statically (CGO_ENABLED=0).
package main

import (
	"encoding/binary"
	"encoding/hex"
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
	ioctlBulk           = 0xC0185502 // USBDEVFS_BULK
	ioctlClaimInterface = 0x8004550F // USBDEVFS_CLAIMINTERFACE
)

// CCID message types (CCID rev 1.1, section 6).
const (
	pcToRDRIccPowerOn = 0x62
	pcToRDRXfrBlock   = 0x6F
	rdrToPCDataBlock  = 0x80
)

const timeoutMS = 10000

type iface struct {
	sysName        string // e.g. 1-1:1.0
	bus, dev       int
	number         uint32
	bulkIn, bulkOu uint8
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: usbapdu APDU-HEX")
		os.Exit(2)
	}
	apdu, err := hex.DecodeString(os.Args[1])
	if err != nil {
		fail(err)
	}
	ifs, err := findCCID("/sys/bus/usb/devices")
	if err != nil {
		fail(err)
	}
	if len(ifs) == 0 {
		fail(errors.New("no CCID interface"))
	}
	for i, it := range ifs {
		atr, resp, err := exchange(it, apdu)
		if err != nil {
			fail(fmt.Errorf("reader %d (%s): %w", i, it.sysName, err))
		}
		fmt.Printf("reader %d atr %X\n", i, atr)
		fmt.Printf("reader %d resp %X\n", i, resp)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "usbapdu:", err)
	os.Exit(1)
}

// findCCID lists the interfaces of class 0x0b with their bulk endpoints,
// read from the device's raw descriptors in sysfs.
func findCCID(sys string) ([]iface, error) {
	dirs, _ := filepath.Glob(filepath.Join(sys, "*:*"))
	slices.Sort(dirs)
	var out []iface
	for _, d := range dirs {
		if read(d, "bInterfaceClass") != "0b" {
			continue
		}
		name := filepath.Base(d)
		devDir := filepath.Join(sys, name[:strings.IndexByte(name, ':')])
		it := iface{sysName: name}
		var err error
		if it.bus, err = strconv.Atoi(read(devDir, "busnum")); err != nil {
			return nil, fmt.Errorf("%s busnum: %w", name, err)
		}
		if it.dev, err = strconv.Atoi(read(devDir, "devnum")); err != nil {
			return nil, fmt.Errorf("%s devnum: %w", name, err)
		}
		n, err := strconv.ParseUint(read(d, "bInterfaceNumber"), 16, 8)
		if err != nil {
			return nil, fmt.Errorf("%s bInterfaceNumber: %w", name, err)
		}
		it.number = uint32(n)
		eps, _ := filepath.Glob(filepath.Join(d, "ep_*"))
		for _, ep := range eps {
			addr, err := strconv.ParseUint(read(ep, "bEndpointAddress"), 16, 8)
			if err != nil || read(ep, "type") != "Bulk" {
				continue
			}
			if addr&0x80 != 0 {
				it.bulkIn = uint8(addr)
			} else {
				it.bulkOu = uint8(addr)
			}
		}
		if it.bulkIn == 0 || it.bulkOu == 0 {
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

// exchange claims the interface, powers the card on and sends one APDU.
func exchange(it iface, apdu []byte) (atr, resp []byte, err error) {
	node := fmt.Sprintf("/dev/bus/usb/%03d/%03d", it.bus, it.dev)
	fd, err := syscall.Open(node, syscall.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	defer syscall.Close(fd)
	n := it.number
	if err := ioctl(fd, ioctlClaimInterface, unsafe.Pointer(&n)); err != nil {
		return nil, nil, fmt.Errorf("claiming interface: %w", err)
	}
	if atr, err = transact(fd, it, 0, pcToRDRIccPowerOn, nil); err != nil {
		return nil, nil, fmt.Errorf("IccPowerOn: %w", err)
	}
	if resp, err = transact(fd, it, 1, pcToRDRXfrBlock, apdu); err != nil {
		return nil, nil, fmt.Errorf("XfrBlock: %w", err)
	}
	return atr, resp, nil
}

// transact sends one CCID command to slot 0 and returns the data of its
// DataBlock answer.
func transact(fd int, it iface, seq byte, typ byte, data []byte) ([]byte, error) {
	msg := make([]byte, 10, 10+len(data))
	msg[0] = typ
	binary.LittleEndian.PutUint32(msg[1:], uint32(len(data)))
	msg[6] = seq
	msg = append(msg, data...)
	if _, err := bulk(fd, it.bulkOu, msg); err != nil {
		return nil, fmt.Errorf("bulk out: %w", err)
	}
	buf := make([]byte, 4096)
	got, err := bulk(fd, it.bulkIn, buf)
	if err != nil {
		return nil, fmt.Errorf("bulk in: %w", err)
	}
	r := buf[:got]
	if len(r) < 10 || r[0] != rdrToPCDataBlock || r[6] != seq {
		return nil, fmt.Errorf("unexpected answer % X", r)
	}
	if r[7]&0x40 != 0 {
		return nil, fmt.Errorf("command failed: bStatus %02X bError %02X", r[7], r[8])
	}
	n := int(binary.LittleEndian.Uint32(r[1:]))
	if 10+n > len(r) {
		return nil, fmt.Errorf("short answer: dwLength %d, %d bytes", n, len(r))
	}
	return r[10 : 10+n], nil
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
