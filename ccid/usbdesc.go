package ccid

import (
	"encoding/binary"
	"fmt"

	"github.com/wsrc-go/wsrc/ccid/internal/usbio"
)

// USB descriptor types and interface classes used to find readers.
const (
	usbDescConfig    = 0x02
	usbDescInterface = 0x04
	usbDescEndpoint  = 0x05
	classSmartCard   = 0x0B
	classVendor      = 0xFF
)

// usbEndpoint is one endpoint descriptor.
type usbEndpoint struct {
	Address    uint8
	Attributes uint8
	MaxPacket  uint16
	Interval   uint8
}

func (e usbEndpoint) in() bool        { return e.Address&0x80 != 0 }
func (e usbEndpoint) bulk() bool      { return e.Attributes&3 == 2 }
func (e usbEndpoint) interrupt() bool { return e.Attributes&3 == 3 }

// usbInterface is one interface (alternate setting) of a configuration,
// with what follows it up to the next interface descriptor.
type usbInterface struct {
	Number, Alt               uint8
	Class, SubClass, Protocol uint8
	Endpoints                 []usbEndpoint
	// ClassDesc is the 54-byte class descriptor, wherever it sits among
	// the interface's descriptors (normally before the endpoints; after
	// them on O2Micro OZ776, Reiner SCT and bludrive II).
	ClassDesc []byte
	// ClassDescLen is the length of a class descriptor (type 0x21 or
	// 0xFF) that is not 54 bytes long, else 0.
	ClassDescLen int
}

// parseConfig splits a raw configuration descriptor into interfaces. It
// tolerates anything after the first malformed descriptor by stopping
// there, as libusb does.
func parseConfig(raw []byte) ([]usbInterface, error) {
	if len(raw) < 9 || raw[1] != usbDescConfig || raw[0] < 9 {
		return nil, fmt.Errorf("%w: not a configuration descriptor (%d bytes)", ErrDescriptor, len(raw))
	}
	total := int(binary.LittleEndian.Uint16(raw[2:]))
	if total < len(raw) && total >= 9 {
		raw = raw[:total]
	}
	var ifs []usbInterface
	cur := -1
	for off := int(raw[0]); off+2 <= len(raw); {
		l := int(raw[off])
		if l < 2 || off+l > len(raw) {
			break
		}
		d := raw[off : off+l]
		switch d[1] {
		case usbDescInterface:
			if l < 9 {
				return nil, fmt.Errorf("%w: interface descriptor of %d bytes", ErrDescriptor, l)
			}
			ifs = append(ifs, usbInterface{Number: d[2], Alt: d[3], Class: d[5], SubClass: d[6], Protocol: d[7]})
			cur = len(ifs) - 1
		case usbDescEndpoint:
			if cur >= 0 && l >= 7 {
				ifs[cur].Endpoints = append(ifs[cur].Endpoints, usbEndpoint{
					Address: d[2], Attributes: d[3], MaxPacket: binary.LittleEndian.Uint16(d[4:]), Interval: d[6]})
			}
		case descTypeCCID, descTypeVendor:
			if cur < 0 || ifs[cur].ClassDesc != nil {
				break
			}
			if l == DescriptorLen {
				ifs[cur].ClassDesc = append([]byte(nil), d...)
				ifs[cur].ClassDescLen = 0
			} else {
				ifs[cur].ClassDescLen = l
			}
		}
		off += l
	}
	return ifs, nil
}

// vendorReaders are the vendor-class (0xFF) readers that speak CCID,
// from libccid's src/92_pcscd_ccid.rules.
var vendorReaders = map[[2]uint16]string{
	{0x046a, 0x003e}: "Cherry SmartTerminal ST-2xxx",
	{0x04e6, 0x5120}: "SCM SCR331-DI NTTCom",
	{0x04e6, 0x512b}: "SCM SDI011",
	{0x04e6, 0x512c}: "SCM SDI011",
	{0x04e6, 0x5291}: "SCM SCL010",
	{0x04e6, 0x5292}: "SCM SCL01x",
	{0x04e6, 0x511a}: "SCM SCR3310 NTTCom",
	{0x04e6, 0x5111}: "SCM SCR331-DI",
	{0x04e6, 0x5121}: "SCM SDI010",
	{0x04e6, 0xe003}: "SCM SPR532",
	{0x0c4b, 0x0300}: "Reiner SCT",
	{0x076b, 0x532a}: "OMNIKEY 5321 CLi USB",
	{0x076b, 0x5340}: "HID 5021 CL",
	{0x08e6, 0x2202}: "Gemalto e-Seal Pro",
	{0x09be, 0x0002}: "MySmartPad",
	{0x08e6, 0x1359}: "Verisign secure storage token",
	{0x08e6, 0xace0}: "Verisign secure token",
	{0x0973, 0x0003}: "e-gate",
	{0x1a74, 0x6354}: "Oberthur CosmoCard",
	{0x1a74, 0x6356}: "Oberthur CosmoCard",
	{0x1db2, 0x0600}: "DUALi DE-ABCM6",
	{0x413c, 0x2100}: "Dell SK-3106",
}

// isVendorReader reports whether vid:pid is an allow-listed vendor-class
// CCID reader.
func isVendorReader(vid, pid uint16) bool {
	_, ok := vendorReaders[[2]uint16{vid, pid}]
	return ok
}

// candidate reports, from DeviceInfo alone, whether the device may hold
// a CCID interface worth opening.
func candidate(info usbio.DeviceInfo) bool {
	for _, c := range info.InterfaceClasses {
		if c == classSmartCard || (c == classVendor && isVendorReader(info.VendorID, info.ProductID)) {
			return true
		}
	}
	return false
}

// ccidInterface is a CCID interface found in a configuration.
type ccidInterface struct {
	Number, Alt int
	// Protocol is bInterfaceProtocol: 0 for CCID; 1 and 2 are ICCD
	// (control-pipe readers), which the driver does not speak.
	Protocol  int
	Desc      Descriptor
	Endpoints usbio.Endpoints
	// IntMaxPacket is the interrupt endpoint's wMaxPacketSize.
	IntMaxPacket int
}

// findCCID returns the CCID interfaces of a configuration (alternate
// setting 0 of each class 0x0B interface, and of 0xFF interfaces on
// allow-listed devices), in interface order. Interfaces that look like
// CCID but are broken (bad descriptor, missing bulk endpoints) are
// reported in errs.
func findCCID(ifs []usbInterface, vid, pid uint16) (found []ccidInterface, errs []error) {
	vendorOK := isVendorReader(vid, pid)
	for _, it := range ifs {
		if it.Alt != 0 {
			continue
		}
		if it.Class != classSmartCard && !(it.Class == classVendor && vendorOK) {
			continue
		}
		if it.ClassDesc == nil {
			if it.ClassDescLen != 0 {
				errs = append(errs, fmt.Errorf("%w: interface %d: class descriptor of %d bytes, want %d",
					ErrDescriptor, it.Number, it.ClassDescLen, DescriptorLen))
			} else if it.Class == classSmartCard {
				errs = append(errs, fmt.Errorf("%w: interface %d: no CCID class descriptor", ErrDescriptor, it.Number))
			}
			continue
		}
		d, err := ParseDescriptor(it.ClassDesc)
		if err != nil {
			errs = append(errs, fmt.Errorf("interface %d: %w", it.Number, err))
			continue
		}
		ci := ccidInterface{Number: int(it.Number), Alt: int(it.Alt), Protocol: int(it.Protocol), Desc: d}
		for _, e := range it.Endpoints {
			switch {
			case e.bulk() && e.in() && ci.Endpoints.BulkIn == 0:
				ci.Endpoints.BulkIn = e.Address
			case e.bulk() && !e.in() && ci.Endpoints.BulkOut == 0:
				ci.Endpoints.BulkOut = e.Address
			case e.interrupt() && e.in() && ci.Endpoints.IntIn == 0:
				ci.Endpoints.IntIn = e.Address
				ci.IntMaxPacket = int(e.MaxPacket)
			}
		}
		if ci.Endpoints.BulkIn == 0 || ci.Endpoints.BulkOut == 0 {
			errs = append(errs, fmt.Errorf("%w: interface %d: bulk-in and bulk-out endpoints needed", ErrDescriptor, it.Number))
			continue
		}
		found = append(found, ci)
	}
	return found, errs
}
