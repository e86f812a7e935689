package ccid

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/ccid/internal/usbio"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.NewReplacer(" ", "", "\n", "", "\t", "").Replace(s))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// qemuClassDesc is QEMU 7.2 usb-ccid's class descriptor, as read in the
// prototype (shared/ccid/qemu-prototype/README.md).
const qemuClassDesc = `36 21 10 01 00 07 01 00 00 00 A0 0F 00 00 00 00 01 00 00 80 25 00 00 00 C2 01 00 00
	FE 00 00 00 00 00 00 00 00 00 00 00 FE 04 01 00 12 00 01 00 FF FF 00 00 01 01`

// qemuConfig is QEMU's configuration descriptor: one interface of class
// 0x0B, the class descriptor, then interrupt-in 0x81, bulk-in 0x82 and
// bulk-out 0x03.
const qemuConfig = `09 02 5D 00 01 01 00 E0 32
	09 04 00 00 03 0B 00 00 00 ` + qemuClassDesc + `
	07 05 81 03 40 00 FF
	07 05 82 02 40 00 00
	07 05 03 02 40 00 00`

func TestParseDescriptorQEMU(t *testing.T) {
	d, err := ParseDescriptor(unhex(t, qemuClassDesc))
	if err != nil {
		t.Fatal(err)
	}
	want := Descriptor{
		CCIDVersion: 0x0110, MaxSlotIndex: 0, VoltageSupport: 7, Protocols: 1,
		DefaultClock: 4000, MaxClock: 65536, DataRate: 9600, MaxDataRate: 115200, MaxIFSD: 254,
		Features: 0x000104FE, MaxMessageLength: 65554, ClassGetResponse: 0xFF, ClassEnvelope: 0xFF,
		PINSupport: 1, MaxBusySlots: 1,
	}
	if d != want {
		t.Errorf("got %+v\nwant %+v", d, want)
	}
	if d.Features.ExchangeLevel() != LevelTPDU {
		t.Errorf("level %v", d.Features.ExchangeLevel())
	}
	for _, f := range []Features{FeatureAutoParams, FeatureAutoActivation, FeatureAutoVoltage, FeatureAutoClock,
		FeatureAutoBaud, FeatureAutoPPSProp, FeatureAutoPPS, FeatureAutoIFSD} {
		if !d.Features.Has(f) {
			t.Errorf("feature %v missing", f)
		}
	}
	if d.Features.Has(FeatureNAD) {
		t.Error("NAD set")
	}
	if !bytes.Equal(d.Bytes(), unhex(t, qemuClassDesc)) {
		t.Errorf("Bytes() = % X", d.Bytes())
	}
	s := d.String()
	for _, w := range []string{"TPDU", "T=0", "1 slot", "115200", "auto-PPS-proprietary", "auto-IFSD"} {
		if !strings.Contains(s, w) {
			t.Errorf("String %q lacks %q", s, w)
		}
	}
}

func TestParseDescriptorErrors(t *testing.T) {
	good := unhex(t, qemuClassDesc)
	bad := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"short", good[:53], "53 bytes"},
		{"long", append(append([]byte(nil), good...), 0), "55 bytes"},
		{"bLength", bad(func(b []byte) []byte { b[0] = 9; return b }), "bLength 9"},
		{"type", bad(func(b []byte) []byte { b[1] = 0x24; return b }), "bDescriptorType"},
	} {
		_, err := ParseDescriptor(tc.b)
		if !errors.Is(err, ErrDescriptor) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want %q", tc.name, err, tc.want)
		}
	}
	// Vendor descriptor type 0xFF is accepted.
	if _, err := ParseDescriptor(bad(func(b []byte) []byte { b[1] = 0xFF; return b })); err != nil {
		t.Errorf("type 0xFF: %v", err)
	}
}

func TestExchangeLevels(t *testing.T) {
	for f, want := range map[Features]ExchangeLevel{
		0x00000000: LevelCharacter, 0x000100BA: LevelTPDU, 0x000207B2: LevelShortAPDU,
		0x000407BA: LevelExtendedAPDU, 0x00030000: LevelInvalid,
	} {
		if got := f.ExchangeLevel(); got != want {
			t.Errorf("%v: %v, want %v", f, got, want)
		}
		if got := f.ExchangeLevel().String(); got == "" {
			t.Error("empty name")
		}
	}
}

func TestParseConfigQEMU(t *testing.T) {
	ifs, err := parseConfig(unhex(t, qemuConfig))
	if err != nil {
		t.Fatal(err)
	}
	found, errs := findCCID(ifs, 0x08e6, 0x4433)
	if len(errs) != 0 || len(found) != 1 {
		t.Fatalf("found %v, errs %v", found, errs)
	}
	ci := found[0]
	if ci.Endpoints != (usbio.Endpoints{BulkIn: 0x82, BulkOut: 0x03, IntIn: 0x81}) || ci.IntMaxPacket != 64 {
		t.Errorf("endpoints %+v", ci.Endpoints)
	}
	if ci.Desc.MaxMessageLength != 65554 {
		t.Errorf("desc %+v", ci.Desc)
	}
}

func TestParseConfigDescriptorAfterEndpoints(t *testing.T) {
	// O2Micro OZ776 style: the class descriptor follows the endpoints;
	// no interrupt endpoint.
	raw := unhex(t, `09 02 00 00 01 01 00 80 32
		09 04 00 00 02 0B 00 00 00
		07 05 82 02 40 00 00
		07 05 03 02 40 00 00 `+qemuClassDesc)
	ifs, err := parseConfig(raw)
	if err != nil {
		t.Fatal(err)
	}
	found, errs := findCCID(ifs, 0x0b97, 0x7762)
	if len(errs) != 0 || len(found) != 1 || found[0].Endpoints.IntIn != 0 || found[0].Endpoints.BulkIn != 0x82 {
		t.Fatalf("found %+v, errs %v", found, errs)
	}
}

func TestFindCCIDComposite(t *testing.T) {
	// Two CCID interfaces and a HID one in between, plus an alternate
	// setting that must be skipped.
	raw := unhex(t, `09 02 00 00 03 01 00 80 32
		09 04 00 00 03 0B 00 00 00 `+qemuClassDesc+`
		07 05 81 03 08 00 10  07 05 82 02 40 00 00  07 05 01 02 40 00 00
		09 04 01 00 01 03 00 00 00  09 21 11 01 00 01 22 20 00  07 05 83 03 08 00 0A
		09 04 02 00 02 0B 00 00 00 `+qemuClassDesc+`
		07 05 84 02 40 00 00  07 05 02 02 40 00 00
		09 04 02 01 02 0B 00 00 00`)
	ifs, err := parseConfig(raw)
	if err != nil {
		t.Fatal(err)
	}
	found, errs := findCCID(ifs, 0x072f, 0x223b)
	if len(errs) != 0 || len(found) != 2 || found[0].Number != 0 || found[1].Number != 2 {
		t.Fatalf("found %+v, errs %v", found, errs)
	}
	if found[1].Endpoints != (usbio.Endpoints{BulkIn: 0x84, BulkOut: 0x02}) {
		t.Errorf("second interface endpoints %+v", found[1].Endpoints)
	}
}

func TestFindCCIDVendorClass(t *testing.T) {
	raw := unhex(t, `09 02 00 00 01 01 00 80 32
		09 04 00 00 02 FF 00 00 00 `+qemuClassDesc+`
		07 05 82 02 40 00 00  07 05 03 02 40 00 00`)
	ifs, _ := parseConfig(raw)
	if found, _ := findCCID(ifs, 0x1234, 0x5678); len(found) != 0 {
		t.Error("unknown vendor-class device taken as a reader")
	}
	if found, _ := findCCID(ifs, 0x04e6, 0xe003); len(found) != 1 {
		t.Error("SPR532 (allow-listed) not found")
	}
	if !candidate(usbio.DeviceInfo{VendorID: 0x04e6, ProductID: 0xe003, InterfaceClasses: []uint8{0xFF}}) ||
		candidate(usbio.DeviceInfo{VendorID: 0x1234, ProductID: 0xe003, InterfaceClasses: []uint8{0xFF, 3}}) ||
		!candidate(usbio.DeviceInfo{InterfaceClasses: []uint8{3, 0x0B}}) {
		t.Error("candidate")
	}
}

func TestFindCCIDBroken(t *testing.T) {
	for _, tc := range []struct{ name, raw, want string }{
		{"no class descriptor", `09 02 00 00 01 01 00 80 32  09 04 00 00 02 0B 00 00 00
			07 05 82 02 40 00 00  07 05 03 02 40 00 00`, "no CCID class descriptor"},
		{"class descriptor of wrong length", `09 02 00 00 01 01 00 80 32  09 04 00 00 02 0B 00 00 00
			05 21 00 00 00  07 05 82 02 40 00 00  07 05 03 02 40 00 00`, "5 bytes"},
		{"no bulk-out", `09 02 00 00 01 01 00 80 32  09 04 00 00 01 0B 00 00 00 ` + qemuClassDesc +
			`07 05 82 02 40 00 00`, "bulk-out"},
	} {
		ifs, err := parseConfig(unhex(t, tc.raw))
		if err != nil {
			t.Fatal(err)
		}
		found, errs := findCCID(ifs, 1, 2)
		if len(found) != 0 || len(errs) != 1 || !strings.Contains(errs[0].Error(), tc.want) {
			t.Errorf("%s: found %v errs %v", tc.name, found, errs)
		}
	}
	if _, err := parseConfig([]byte{9, 4}); err == nil {
		t.Error("short config accepted")
	}
}

func TestMessageRoundTrip(t *testing.T) {
	for _, m := range []Message{
		IccPowerOn(Voltage3V), IccPowerOff(), GetSlotStatus(), XfrBlock(3, ChainMore, nil),
		XfrBlock(0, ChainBegin, []byte{1, 2, 3}), GetParameters(), ResetParameters(),
		SetParameters(1, []byte{0x96, 0x10, 0, 0x45, 0, 0xFE, 0}), Escape([]byte{0x1F, 1}), IccClock(true),
		T0APDU(3, 0xFF, 0xFF), Secure(0, 0, []byte{0}), Mechanical(1), Abort(),
		SetDataRateAndClockFrequency(4000, 10752),
	} {
		m.Slot, m.Seq = 3, 200
		b := AppendMessage(nil, m)
		got, err := ParseMessage(b)
		if err != nil {
			t.Fatalf("%v: %v", m, err)
		}
		if got.Type != m.Type || got.Slot != 3 || got.Seq != 200 || got.Param != m.Param || !bytes.Equal(got.Data, m.Data) {
			t.Errorf("round trip %v → %v", m, got)
		}
		if _, ok := m.Type.Response(); !ok {
			t.Errorf("%v has no response type", m.Type)
		}
		if strings.HasPrefix(m.Type.String(), "message") {
			t.Errorf("%v unnamed", m.Type)
		}
	}
	c, r, err := Message{Data: SetDataRateAndClockFrequency(4000, 10752).Data}.ClockAndRate()
	if c != 4000 || r != 10752 || err != nil {
		t.Errorf("ClockAndRate %d %d %v", c, r, err)
	}
	if _, _, err := (Message{}).ClockAndRate(); err == nil {
		t.Error("empty ClockAndRate accepted")
	}
}

func TestParseMessageErrors(t *testing.T) {
	// QEMU 7.2 answers GetParameters with dwLength 0 and 17 bytes on the wire.
	qemuParams := append(unhex(t, "82 00000000 00 03 00 00 00"), make([]byte, 7)...)
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"empty", nil, "0 bytes"},
		{"short header", []byte{0x80, 0, 0, 0}, "4 bytes"},
		{"dwLength too big", unhex(t, "80 05000000 00 01 00 00 00 90 00"), "dwLength 5 but 2"},
		{"qemu GetParameters", qemuParams, "dwLength 0 but 7"},
		{"huge dwLength", unhex(t, "80 ffffffff 00 01 00 00 00"), "dwLength 4294967295"},
	} {
		_, err := ParseMessage(tc.b)
		if !errors.Is(err, ErrFrame) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}

func TestResponseStatus(t *testing.T) {
	m, err := ParseMessage(unhex(t, "80 00000000 00 07 42 FE 00"))
	if err != nil {
		t.Fatal(err)
	}
	if !m.Failed() || m.TimeExtension() || m.ICC() != ICCAbsent || m.ErrorCode() != 0xFE || m.Chain() != 0 {
		t.Errorf("decoded %v", m)
	}
	m.Param[0] = 0x80
	if !m.TimeExtension() || m.Failed() || m.ICC() != ICCActive {
		t.Error("time extension")
	}
	if !strings.Contains(m.String(), "DataBlock slot 0 seq 7") {
		t.Error(m.String())
	}
}

func TestNotifications(t *testing.T) {
	// 8 slots: slot 0 present+changed, slot 3 changed (removed), slot 5 present.
	b := AppendNotifySlotChange(nil, 8, func(s int) bool { return s == 0 || s == 5 }, func(s int) bool { return s == 0 || s == 3 })
	if !bytes.Equal(b, []byte{0x50, 0x83, 0x04}) {
		t.Fatalf("encoded % X", b)
	}
	n, err := ParseNotification(b, 8)
	if err != nil || len(n.Slots) != 8 {
		t.Fatal(n, err)
	}
	for _, s := range n.Slots {
		wantP, wantC := s.Slot == 0 || s.Slot == 5, s.Slot == 0 || s.Slot == 3
		if s.Present != wantP || s.Changed != wantC {
			t.Errorf("slot %+v", s)
		}
	}
	// QEMU: 50 03 for one slot.
	n, err = ParseNotification([]byte{0x50, 0x03}, 1)
	if err != nil || len(n.Slots) != 1 || !n.Slots[0].Present || !n.Slots[0].Changed {
		t.Errorf("qemu %+v %v", n, err)
	}
	// Fewer bytes than slots: the missing slots are left out.
	n, _ = ParseNotification([]byte{0x50, 0x03}, 8)
	if len(n.Slots) != 4 {
		t.Errorf("%d slots from one byte", len(n.Slots))
	}
	n, err = ParseNotification([]byte{0x51, 0x02, 0x09, 0x01}, 1)
	if err != nil || n.Slot != 2 || n.Seq != 9 || n.Code != 1 {
		t.Errorf("hardware error %+v %v", n, err)
	}
	for _, b := range [][]byte{nil, {0x50}, {0x51, 1, 2}, {0x80, 0}} {
		if _, err := ParseNotification(b, 1); !errors.Is(err, ErrFrame) {
			t.Errorf("% X accepted", b)
		}
	}
}

func TestSlotErrors(t *testing.T) {
	for _, tc := range []struct {
		e       SlotError
		is      []error
		isNot   []error
		message string
	}{
		{SlotError{Reader: "R", Slot: 1, Command: PCToRDRIccPowerOn, Status: 0x41, Code: 0xFE, Failed: true},
			[]error{ErrICCMute, card.ErrMute}, []error{card.ErrNoCard}, "ccid: R slot 1: IccPowerOn failed: ICC mute (bError 0xfe), card present, inactive"},
		{SlotError{Reader: "R", Command: PCToRDRIccPowerOn, Status: 0x42, Code: 0xFE, Failed: true},
			[]error{ErrICCMute, card.ErrNoCard}, []error{card.ErrMute}, "no card"},
		{SlotError{Reader: "R", Command: PCToRDRXfrBlock, Status: 0x02},
			[]error{card.ErrNoCard}, []error{ErrICCMute}, "XfrBlock: no card (bStatus 0x02)"},
		{SlotError{Reader: "R", Command: PCToRDRXfrBlock, Status: 0x42, Code: 0xFE, Failed: true, Removed: true},
			[]error{card.ErrRemoved, ErrICCMute}, []error{card.ErrNoCard}, "card removed"},
		{SlotError{Command: PCToRDRXfrBlock, Status: 0x40, Code: 0x05, Failed: true}, []error{ErrBadSlot}, nil, "slot does not exist"},
		{SlotError{Command: PCToRDRXfrBlock, Status: 0x40, Code: 0x07, Failed: true}, []error{ErrBadParameter}, nil, "bad parameter"},
		{SlotError{Command: PCToRDRXfrBlock, Status: 0x40, Code: 0x90, Failed: true}, []error{ErrVendor}, nil, "vendor"},
		{SlotError{Command: PCToRDRXfrBlock, Status: 0x40, Code: 0xE0, Failed: true}, []error{ErrSlotBusy}, nil, "slot busy"},
	} {
		err := error(&tc.e)
		for _, w := range tc.is {
			if !errors.Is(err, w) {
				t.Errorf("%v is not %v", err, w)
			}
		}
		for _, w := range tc.isNot {
			if errors.Is(err, w) {
				t.Errorf("%v is %v", err, w)
			}
		}
		if !strings.Contains(err.Error(), tc.message) {
			t.Errorf("%q lacks %q", err, tc.message)
		}
	}
	for code := 0; code < 256; code++ {
		if ErrorCodeName(byte(code)) == "" {
			t.Errorf("code %#x unnamed", code)
		}
	}
}

func FuzzParseDescriptor(f *testing.F) {
	f.Add(unhex(f, qemuClassDesc))
	f.Add([]byte{54, 0x21})
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := ParseDescriptor(b)
		if err != nil {
			return
		}
		back := d.Bytes()
		if !bytes.Equal(back[2:], b[2:]) {
			t.Fatalf("round trip % X → % X", b, back)
		}
		_ = d.String()
	})
}

func FuzzParseConfig(f *testing.F) {
	f.Add(unhex(f, qemuConfig))
	f.Add([]byte{9, 2, 0, 0, 1, 1, 0, 0x80, 0x32, 9, 4, 0, 0, 2, 0x0B, 0, 0, 0, 54, 0x21})
	f.Fuzz(func(t *testing.T, b []byte) {
		ifs, err := parseConfig(b)
		if err != nil {
			return
		}
		found, _ := findCCID(ifs, 0x04e6, 0xe003)
		for _, ci := range found {
			if ci.Endpoints.BulkIn == 0 || ci.Endpoints.BulkOut == 0 {
				t.Fatal("interface without bulk endpoints accepted")
			}
		}
	})
}

func FuzzParseMessage(f *testing.F) {
	f.Add(unhex(f, "80 02000000 00 01 00 00 00 90 00"))
	f.Add(unhex(f, "82 00000000 00 03 00 00 00 00 00 00 00"))
	f.Add([]byte{0x50, 0x03})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseMessage(b)
		if err == nil {
			if !bytes.Equal(AppendMessage(nil, m), b) {
				t.Fatalf("round trip of % X", b)
			}
			_ = m.String()
		}
		n, err := ParseNotification(b, 8)
		if err == nil && n.Type == RDRToPCNotifySlotChange && len(n.Slots) > 8 {
			t.Fatal("more slots than asked")
		}
	})
}
