// Command usbapdu is the smallest guest program of the QEMU tests: it
// proves the harness without any project driver code. It finds the USB
// CCID interfaces in sysfs, opens each through usbfs with raw ioctls
// (package rawccid), powers the card on, sends one APDU (given in hex as
// the argument) in an XfrBlock and prints, per reader:
//
//	reader N atr <hex>
//	reader N resp <hex>
//
// It exits non-zero on any error. Linked statically (CGO_ENABLED=0).
package main

import (
	"encoding/hex"
	"errors"
	"fmt"
	"os"

	"github.com/wsrc-go/wsrc/test/qemu/guest/internal/rawccid"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: usbapdu APDU-HEX")
		os.Exit(2)
	}
	apdu, err := hex.DecodeString(os.Args[1])
	if err != nil {
		fail(err)
	}
	ifs, err := rawccid.Find("/sys/bus/usb/devices")
	if err != nil {
		fail(err)
	}
	if len(ifs) == 0 {
		fail(errors.New("no CCID interface"))
	}
	for i, it := range ifs {
		atr, resp, err := exchange(it, apdu)
		if err != nil {
			fail(fmt.Errorf("reader %d (%s): %w", i, it.SysName, err))
		}
		fmt.Printf("reader %d atr %X\n", i, atr)
		fmt.Printf("reader %d resp %X\n", i, resp)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "usbapdu:", err)
	os.Exit(1)
}

// exchange claims the interface, powers the card on and sends one APDU.
func exchange(it rawccid.Interface, apdu []byte) (atr, resp []byte, err error) {
	r, err := rawccid.Open(it, 4096)
	if err != nil {
		return nil, nil, err
	}
	defer r.Close()
	if resp, err = r.XfrBlock(apdu); err != nil {
		return nil, nil, fmt.Errorf("XfrBlock: %w", err)
	}
	return r.ATR(), resp, nil
}
