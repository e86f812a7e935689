package ccid

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// DescriptorLen is the length of the CCID class descriptor.
const DescriptorLen = 54

// Class descriptor types: 0x21 is the CCID functional descriptor; some
// pre-1.0 vendor-class readers use 0xFF.
const (
	descTypeCCID   = 0x21
	descTypeVendor = 0xFF
)

// ErrDescriptor is wrapped by every descriptor parsing error.
var ErrDescriptor = errors.New("bad CCID descriptor")

// Descriptor is the CCID class descriptor of one interface (CCID rev 1.1
// §5.1). Clocks are in kHz, data rates in bit/s.
type Descriptor struct {
	CCIDVersion      uint16 // bcdCCID
	MaxSlotIndex     uint8  // slots are 0..MaxSlotIndex
	VoltageSupport   uint8  // bit 0: 5 V, bit 1: 3 V, bit 2: 1.8 V
	Protocols        uint32 // bit 0: T=0, bit 1: T=1
	DefaultClock     uint32
	MaxClock         uint32
	NumClocks        uint8
	DataRate         uint32
	MaxDataRate      uint32
	NumDataRates     uint8
	MaxIFSD          uint32
	SynchProtocols   uint32
	Mechanical       uint32
	Features         Features
	MaxMessageLength uint32 // dwMaxCCIDMessageLength, header included
	ClassGetResponse uint8
	ClassEnvelope    uint8
	LCDLayout        uint16
	PINSupport       uint8
	MaxBusySlots     uint8 // bMaxCCIDBusySlots
}

// ParseDescriptor parses the 54-byte CCID class descriptor (bLength,
// bDescriptorType 0x21 or 0xFF, then the fields).
func ParseDescriptor(b []byte) (Descriptor, error) {
	if len(b) != DescriptorLen {
		return Descriptor{}, fmt.Errorf("%w: %d bytes, want %d", ErrDescriptor, len(b), DescriptorLen)
	}
	if b[0] != DescriptorLen {
		return Descriptor{}, fmt.Errorf("%w: bLength %d, want %d", ErrDescriptor, b[0], DescriptorLen)
	}
	if b[1] != descTypeCCID && b[1] != descTypeVendor {
		return Descriptor{}, fmt.Errorf("%w: bDescriptorType %#02x, want 0x21", ErrDescriptor, b[1])
	}
	le := binary.LittleEndian
	return Descriptor{
		CCIDVersion:      le.Uint16(b[2:]),
		MaxSlotIndex:     b[4],
		VoltageSupport:   b[5],
		Protocols:        le.Uint32(b[6:]),
		DefaultClock:     le.Uint32(b[10:]),
		MaxClock:         le.Uint32(b[14:]),
		NumClocks:        b[18],
		DataRate:         le.Uint32(b[19:]),
		MaxDataRate:      le.Uint32(b[23:]),
		NumDataRates:     b[27],
		MaxIFSD:          le.Uint32(b[28:]),
		SynchProtocols:   le.Uint32(b[32:]),
		Mechanical:       le.Uint32(b[36:]),
		Features:         Features(le.Uint32(b[40:])),
		MaxMessageLength: le.Uint32(b[44:]),
		ClassGetResponse: b[48],
		ClassEnvelope:    b[49],
		LCDLayout:        le.Uint16(b[50:]),
		PINSupport:       b[52],
		MaxBusySlots:     b[53],
	}, nil
}

// Bytes encodes the descriptor (bDescriptorType 0x21); the inverse of
// ParseDescriptor, used by simulated readers.
func (d Descriptor) Bytes() []byte {
	b := make([]byte, DescriptorLen)
	le := binary.LittleEndian
	b[0], b[1] = DescriptorLen, descTypeCCID
	le.PutUint16(b[2:], d.CCIDVersion)
	b[4], b[5] = d.MaxSlotIndex, d.VoltageSupport
	le.PutUint32(b[6:], d.Protocols)
	le.PutUint32(b[10:], d.DefaultClock)
	le.PutUint32(b[14:], d.MaxClock)
	b[18] = d.NumClocks
	le.PutUint32(b[19:], d.DataRate)
	le.PutUint32(b[23:], d.MaxDataRate)
	b[27] = d.NumDataRates
	le.PutUint32(b[28:], d.MaxIFSD)
	le.PutUint32(b[32:], d.SynchProtocols)
	le.PutUint32(b[36:], d.Mechanical)
	le.PutUint32(b[40:], uint32(d.Features))
	le.PutUint32(b[44:], d.MaxMessageLength)
	b[48], b[49] = d.ClassGetResponse, d.ClassEnvelope
	le.PutUint16(b[50:], d.LCDLayout)
	b[52], b[53] = d.PINSupport, d.MaxBusySlots
	return b
}

// Slots returns the number of slots behind the interface.
func (d Descriptor) Slots() int { return int(d.MaxSlotIndex) + 1 }

// SupportsT0 reports whether the reader supports T=0.
func (d Descriptor) SupportsT0() bool { return d.Protocols&1 != 0 }

// SupportsT1 reports whether the reader supports T=1.
func (d Descriptor) SupportsT1() bool { return d.Protocols&2 != 0 }

// BusySlots returns how many slots may run a command at once (at least
// 1; a reader announcing 0 is treated as 1).
func (d Descriptor) BusySlots() int {
	if d.MaxBusySlots == 0 {
		return 1
	}
	return int(d.MaxBusySlots)
}

// ProtocolNames returns "T=0", "T=1" or "T=0/T=1".
func (d Descriptor) ProtocolNames() string {
	var p []string
	if d.SupportsT0() {
		p = append(p, "T=0")
	}
	if d.SupportsT1() {
		p = append(p, "T=1")
	}
	if len(p) == 0 {
		return "none"
	}
	return strings.Join(p, "/")
}

// String summarises the descriptor for logs and `wsrc-agent readers`.
func (d Descriptor) String() string {
	return fmt.Sprintf("%s, %s, %d slot(s), max %d bit/s, clock %d kHz, msg %d, busy %d, features %s",
		d.Features.ExchangeLevel(), d.ProtocolNames(), d.Slots(), d.MaxDataRate, d.DefaultClock,
		d.MaxMessageLength, d.BusySlots(), d.Features)
}

// Features is dwFeatures.
type Features uint32

// dwFeatures bits (CCID rev 1.1 table 5.1-1; libccid src/ccid.h).
const (
	FeatureAutoParams     Features = 0x00000002 // automatic parameter configuration from the ATR
	FeatureAutoActivation Features = 0x00000004 // automatic activation on insertion
	FeatureAutoVoltage    Features = 0x00000008 // automatic voltage selection
	FeatureAutoClock      Features = 0x00000010 // automatic clock change
	FeatureAutoBaud       Features = 0x00000020 // automatic baud rate change
	FeatureAutoPPSProp    Features = 0x00000040 // automatic parameter negotiation (proprietary)
	FeatureAutoPPS        Features = 0x00000080 // automatic PPS according to the current parameters
	FeatureClockStop      Features = 0x00000100 // can set the ICC in clock stop mode
	FeatureNAD            Features = 0x00000200 // NAD other than 00 accepted (T=1)
	FeatureAutoIFSD       Features = 0x00000400 // automatic IFSD exchange as first exchange (T=1)
	FeatureWakeup         Features = 0x00100000 // USB wake-up on card insertion/removal
	exchangeMask          Features = 0x00070000
)

var featureNames = []struct {
	bit  Features
	name string
}{
	{FeatureAutoParams, "auto-params"}, {FeatureAutoActivation, "auto-activation"},
	{FeatureAutoVoltage, "auto-voltage"}, {FeatureAutoClock, "auto-clock"}, {FeatureAutoBaud, "auto-baud"},
	{FeatureAutoPPSProp, "auto-PPS-proprietary"}, {FeatureAutoPPS, "auto-PPS"}, {FeatureClockStop, "clock-stop"},
	{FeatureNAD, "NAD"}, {FeatureAutoIFSD, "auto-IFSD"}, {FeatureWakeup, "wakeup"},
}

// String lists the feature bits by name, with the raw value.
func (f Features) String() string {
	var s []string
	for _, n := range featureNames {
		if f&n.bit != 0 {
			s = append(s, n.name)
		}
	}
	return fmt.Sprintf("%#08x[%s]", uint32(f), strings.Join(s, ","))
}

// Has reports whether every bit of b is set.
func (f Features) Has(b Features) bool { return f&b == b }

// ExchangeLevel is the unit the reader exchanges with the host.
type ExchangeLevel int

// Exchange levels (dwFeatures & 0x00070000).
const (
	LevelCharacter ExchangeLevel = iota
	LevelTPDU
	LevelShortAPDU
	LevelExtendedAPDU
	LevelInvalid
)

// ExchangeLevel decodes the exchange level bits.
func (f Features) ExchangeLevel() ExchangeLevel {
	switch f & exchangeMask {
	case 0:
		return LevelCharacter
	case 0x10000:
		return LevelTPDU
	case 0x20000:
		return LevelShortAPDU
	case 0x40000:
		return LevelExtendedAPDU
	}
	return LevelInvalid
}

func (l ExchangeLevel) String() string {
	switch l {
	case LevelCharacter:
		return "character"
	case LevelTPDU:
		return "TPDU"
	case LevelShortAPDU:
		return "short APDU"
	case LevelExtendedAPDU:
		return "extended APDU"
	}
	return "invalid exchange level"
}
