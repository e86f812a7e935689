package ccidsim

import (
	"encoding/binary"

	"github.com/wsrc-go/wsrc/ccid"
)

// Profile is a reader model: its USB identity, CCID descriptor and the
// quirks the simulation reproduces.
type Profile struct {
	// Name is the USB product string.
	Name                string
	Manufacturer        string
	VendorID, ProductID uint16
	Descriptor          ccid.Descriptor
	// DataRates answers GET_DATA_RATES; nil stalls the request.
	DataRates []uint32
	// Interrupt gives the interface an interrupt-in endpoint for
	// NotifySlotChange; without it the host must poll.
	Interrupt bool
	// DescriptorAfterEndpoints puts the class descriptor after the
	// endpoint descriptors (O2Micro OZ776, Reiner SCT, bludrive II).
	DescriptorAfterEndpoints bool
	// Interfaces is the number of CCID interfaces (composite devices
	// such as the ACR1252 have several); 0 means 1.
	Interfaces int
	// QEMU reproduces QEMU 7.2 usb-ccid: responses over 374 bytes are
	// dropped, GetParameters carries 17 bytes with dwLength 0, Escape is
	// answered with SlotStatus, XfrBlock without a card answers "no card"
	// without the failed bit, IccPowerOn without a card returns the stale
	// ATR, and the ABORT class request stalls. The payload is passed to
	// the card verbatim.
	QEMU bool
}

// Descriptors of readers seen in SIM labs, from LudovicRousseau/CCID
// readers/*.txt (facts in shared/ccid/facts.md).
var (
	// OMNIKEY3x21 is the HID OMNIKEY 3x21: short and extended APDU
	// level, automatic PPS and IFSD, 106 data rates.
	OMNIKEY3x21 = Profile{
		Name: "OMNIKEY 3x21 Smart Card Reader", Manufacturer: "HID Global", VendorID: 0x076B, ProductID: 0x3031,
		Descriptor: ccid.Descriptor{CCIDVersion: 0x0110, VoltageSupport: 7, Protocols: 3,
			DefaultClock: 4800, MaxClock: 4800, NumClocks: 1, DataRate: 10752, MaxDataRate: 412903,
			NumDataRates: 106, MaxIFSD: 254, SynchProtocols: 7, Features: 0x000407BA,
			MaxMessageLength: 271, ClassGetResponse: 0xFF, ClassEnvelope: 0xFF, MaxBusySlots: 1},
		DataRates: omnikeyRates, Interrupt: true,
	}
	// SCR3310 is the SCM/Identiv SCR3310: TPDU level, automatic PPS,
	// 5 V only, dwMaxCCIDMessageLength 263 (the SCM firmware bug).
	SCR3310 = Profile{
		Name: "SCR3310 USB Smart Card Reader", Manufacturer: "SCM Microsystems Inc.", VendorID: 0x04E6, ProductID: 0x511F,
		Descriptor: ccid.Descriptor{CCIDVersion: 0x0110, VoltageSupport: 1, Protocols: 3,
			DefaultClock: 4000, MaxClock: 8000, DataRate: 10753, MaxDataRate: 344105, MaxIFSD: 252,
			Features: 0x000100BA, MaxMessageLength: 263, ClassGetResponse: 0xFF, ClassEnvelope: 0xFF, MaxBusySlots: 1},
		Interrupt: true,
	}
	// CT30 is the Gemalto IDBridge CT30 / PC Twin: TPDU level, the host
	// must do PPS and SetParameters, no automatic voltage.
	CT30 = Profile{
		Name: "USB SmartCard Reader", Manufacturer: "Gemalto", VendorID: 0x08E6, ProductID: 0x3437,
		Descriptor: ccid.Descriptor{CCIDVersion: 0x0101, VoltageSupport: 7, Protocols: 3,
			DefaultClock: 4800, MaxClock: 4800, DataRate: 12903, MaxDataRate: 825806, NumDataRates: 53,
			MaxIFSD: 254, Features: 0x00010230, MaxMessageLength: 271, MaxBusySlots: 1},
		DataRates: ct30Rates, Interrupt: true,
	}
	// ACR38U is the ACS ACR38U-CCID: TPDU level, host PPS, 5 V only,
	// at most 129032 bit/s.
	ACR38U = Profile{
		Name: "ACR38 USB Reader", Manufacturer: "ACS", VendorID: 0x072F, ProductID: 0x90CC,
		Descriptor: ccid.Descriptor{CCIDVersion: 0x0100, VoltageSupport: 1, Protocols: 3,
			DefaultClock: 4000, MaxClock: 4000, DataRate: 10752, MaxDataRate: 129032, MaxIFSD: 254,
			Features: 0x00010030, MaxMessageLength: 271, MaxBusySlots: 1},
		Interrupt: true,
	}
	// ACR39U is the ACS ACR39U: TPDU level, automatic PPS, 1.8/3/5 V.
	ACR39U = Profile{
		Name: "ACR39U ICC Reader", Manufacturer: "ACS", VendorID: 0x072F, ProductID: 0xB100,
		Descriptor: ccid.Descriptor{CCIDVersion: 0x0110, VoltageSupport: 7, Protocols: 3,
			DefaultClock: 4800, MaxClock: 16000, DataRate: 12903, MaxDataRate: 826000, MaxIFSD: 247,
			Features: 0x000100B2, MaxMessageLength: 271, ClassGetResponse: 0xFF, ClassEnvelope: 0xFF, MaxBusySlots: 1},
		Interrupt: true,
	}
	// OCTSIM is the sysmocom sysmoOCTSIM: 8 slots, T=0 only, TPDU level,
	// 2.5 MHz clock, 8 busy slots.
	OCTSIM = Profile{
		Name: "sysmoOCTSIM", Manufacturer: "sysmocom - s.f.m.c. GmbH", VendorID: 0x1D50, ProductID: 0x6141,
		Descriptor: ccid.Descriptor{CCIDVersion: 0x0110, MaxSlotIndex: 7, VoltageSupport: 7, Protocols: 1,
			DefaultClock: 2500, MaxClock: 20000, NumClocks: 4, DataRate: 6720, MaxDataRate: 921600,
			Features: 0x000100B0, MaxMessageLength: 272, ClassGetResponse: 0xFF, ClassEnvelope: 0xFF, MaxBusySlots: 8},
		Interrupt: true,
	}
	// AU9560 is the Alcor Micro AU9560 ("EMV Smartcard Reader", USB ID
	// 058F:9540 as libccid's readers/AlcorMicro_AU9560.txt gives it):
	// short and extended APDU level with automatic PPS and IFSD, 3.7 MHz,
	// 138 data rates announced but GET_DATA_RATES stalls, and hardware
	// errors above ~200 kbit/s, so both libccid and our driver cap it
	// there by VID:PID.
	AU9560 = Profile{
		Name: "EMV Smartcard Reader", Manufacturer: "Generic", VendorID: 0x058F, ProductID: 0x9540,
		Descriptor: ccid.Descriptor{CCIDVersion: 0x0110, VoltageSupport: 7, Protocols: 3,
			DefaultClock: 3700, MaxClock: 12000, NumClocks: 3, DataRate: 9946, MaxDataRate: 688172,
			NumDataRates: 138, MaxIFSD: 254, SynchProtocols: 7, Features: 0x000404BE,
			MaxMessageLength: 272, ClassGetResponse: 0xFF, ClassEnvelope: 0xFF, MaxBusySlots: 1},
		Interrupt: true,
	}
	// NoInterrupt is a generic TPDU reader without an interrupt
	// endpoint (so the host polls) whose class descriptor follows its
	// endpoints.
	NoInterrupt = Profile{
		Name: "Generic CCID Reader (no interrupt endpoint)", Manufacturer: "wsrc-go", VendorID: 0x1209, ProductID: 0xCC1D,
		Descriptor: ccid.Descriptor{CCIDVersion: 0x0110, VoltageSupport: 7, Protocols: 3,
			DefaultClock: 4000, MaxClock: 4000, DataRate: 10752, MaxDataRate: 250000, MaxIFSD: 254,
			Features: 0x000100BA, MaxMessageLength: 271, ClassGetResponse: 0xFF, ClassEnvelope: 0xFF, MaxBusySlots: 1},
		DescriptorAfterEndpoints: true,
	}
	// ShortAPDU is an APDU-level reader without extended APDUs (like the
	// old OMNIKEY CardMan 3121 or the Kobil TriBank).
	ShortAPDU = Profile{
		Name: "Short APDU Reader", Manufacturer: "wsrc-go", VendorID: 0x1209, ProductID: 0xCC1E,
		Descriptor: ccid.Descriptor{CCIDVersion: 0x0110, VoltageSupport: 7, Protocols: 3,
			DefaultClock: 4000, MaxClock: 4000, DataRate: 10752, MaxDataRate: 250000, MaxIFSD: 254,
			Features: 0x000207BA, MaxMessageLength: 271, ClassGetResponse: 0xFF, ClassEnvelope: 0xFF, MaxBusySlots: 1},
		Interrupt: true,
	}
	// Composite is a device with two CCID interfaces of one slot each
	// (ACS ACR1252-style), handled as one two-slot reader.
	Composite = Profile{
		Name: "Dual Interface Reader", Manufacturer: "wsrc-go", VendorID: 0x1209, ProductID: 0xCC1F,
		Descriptor: ccid.Descriptor{CCIDVersion: 0x0110, VoltageSupport: 7, Protocols: 3,
			DefaultClock: 4000, MaxClock: 4000, DataRate: 10752, MaxDataRate: 250000, MaxIFSD: 254,
			Features: 0x000100BA, MaxMessageLength: 271, ClassGetResponse: 0xFF, ClassEnvelope: 0xFF, MaxBusySlots: 1},
		Interrupt: true, Interfaces: 2,
	}
	// CharacterLevel is a reader that only exchanges characters; the
	// driver refuses it.
	CharacterLevel = Profile{
		Name: "Character Level Reader", Manufacturer: "wsrc-go", VendorID: 0x1209, ProductID: 0xCC20,
		Descriptor: ccid.Descriptor{CCIDVersion: 0x0110, VoltageSupport: 7, Protocols: 1,
			DefaultClock: 4000, MaxClock: 4000, DataRate: 10752, MaxDataRate: 10752,
			Features: 0x00000000, MaxMessageLength: 271, MaxBusySlots: 1},
		Interrupt: true,
	}
	// QEMU is QEMU 7.2's usb-ccid (shared/ccid/qemu-prototype/README.md):
	// TPDU/T=0 with every automatic feature, one slot.
	QEMU = Profile{
		Name: "QEMU USB CCID", Manufacturer: "QEMU", VendorID: 0x08E6, ProductID: 0x4433,
		Descriptor: ccid.Descriptor{CCIDVersion: 0x0110, VoltageSupport: 7, Protocols: 1,
			DefaultClock: 4000, MaxClock: 65536, DataRate: 9600, MaxDataRate: 115200, MaxIFSD: 254,
			Features: 0x000104FE, MaxMessageLength: 65554, ClassGetResponse: 0xFF, ClassEnvelope: 0xFF,
			PINSupport: 1, MaxBusySlots: 1},
		Interrupt: true, QEMU: true,
	}
)

// Profiles returns the reader profiles that take cards (all but
// CharacterLevel), for tests that run over every one.
func Profiles() []Profile {
	return []Profile{OMNIKEY3x21, SCR3310, CT30, ACR38U, ACR39U, OCTSIM, AU9560, NoInterrupt, ShortAPDU, Composite, QEMU}
}

func (p Profile) interfaces() int {
	if p.Interfaces < 1 {
		return 1
	}
	return p.Interfaces
}

// configDescriptor builds the raw configuration descriptor: per
// interface the interface descriptor, the class descriptor (before or
// after the endpoints) and the endpoints (interrupt-in, bulk-in,
// bulk-out).
func (p Profile) configDescriptor() []byte { return p.configWith(endpoints) }

// configWith is configDescriptor with the endpoint addresses of each
// interface from eps.
func (p Profile) configWith(eps func(iface int) (bulkIn, bulkOut, intIn byte)) []byte {
	b := []byte{9, 2, 0, 0, byte(p.interfaces()), 1, 0, 0x80, 50}
	for i := 0; i < p.interfaces(); i++ {
		in, out, intr := eps(i)
		neps := 2
		if p.Interrupt {
			neps = 3
		}
		b = append(b, 9, 4, byte(i), 0, byte(neps), 0x0B, 0, 0, 0)
		class := p.Descriptor.Bytes()
		if !p.DescriptorAfterEndpoints {
			b = append(b, class...)
		}
		if p.Interrupt {
			b = append(b, 7, 5, intr, 3, 8, 0, 16)
		}
		b = append(b, 7, 5, in, 2, 64, 0, 0, 7, 5, out, 2, 64, 0, 0)
		if p.DescriptorAfterEndpoints {
			b = append(b, class...)
		}
	}
	binary.LittleEndian.PutUint16(b[2:], uint16(len(b)))
	return b
}

// endpoints returns the endpoint addresses of interface i.
func endpoints(i int) (bulkIn, bulkOut, intIn byte) {
	n := byte(3*i + 1)
	return 0x80 | (n + 1), n + 2, 0x80 | n
}

var omnikeyRates = []uint32{10752, 21505, 43010, 86021, 172043, 344086, 129032, 215053, 12903, 25806, 51612, 103225,
	206451, 412903, 154838, 258064, 7168, 14336, 28673, 57347, 114695, 229390, 143369, 8602, 17204, 34408, 68817, 137634,
	275268, 5376, 64516, 107526, 6451, 77419, 8064, 16129, 32258, 96774, 161290, 3584, 4301, 2688, 53763, 3225, 38709,
	4032, 48387, 80645, 2150, 2580, 5161, 10322, 20645, 41290, 82580, 30967, 7812, 15625, 31250, 62500, 125000, 250000,
	93750, 156250, 9375, 18750, 37500, 75000, 150000, 300000, 600000, 112500, 187500, 5208, 10416, 20833, 41666, 83333,
	166666, 104166, 6250, 12500, 25000, 50000, 100000, 200000, 3906, 46875, 78125, 4687, 56250, 5859, 11718, 23437,
	70312, 117187, 2604, 52083, 3125, 1953, 39062, 2343, 28125, 2929, 35156, 58593}

var ct30Rates = []uint32{12903, 25806, 51613, 103226, 206452, 412903, 825806, 154839, 258065, 17204, 34409, 68817,
	137634, 275269, 550538, 172043, 12403, 24806, 49612, 99225, 198450, 396899, 74419, 124031, 86022, 38710, 64516,
	10323, 20645, 41290, 82581, 165161, 30968, 18750, 37500, 75000, 150000, 300000, 600000, 112500, 187500, 12500,
	25000, 50000, 100000, 200000, 400000, 125000, 56250, 93750, 62500, 28125, 46875}
