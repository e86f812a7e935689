package ccid

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/wsrc-go/wsrc/card/atr"
)

func TestTimeouts(t *testing.T) {
	simATR := atr.MustParse("3b9f96801fc78031e073fe211b575352435653494da3")
	for _, tc := range []struct {
		name string
		got  time.Duration
		want time.Duration
	}{
		// T=0, Fi 512 Di 32, WI 10, 4 MHz: ISO out = 5 EGT + 260 WWT with
		// WWT = 960·10·512/4000 ms = 1228.8 ms.
		{"T=0 sim card 4 MHz", cardTimeout(simATR, 0, 0x96, 4000), ms(5*(12*512/32.0/4000) + 260*1228.8)},
		// Defaults (Fi 372, Di 1, WI 10) at 4.8 MHz.
		{"T=0 defaults", t0Timeout(372, 1, 0, 10, 4800), ms(5*(12*372/4800.0) + 260*960*10*372/4800.0)},
		// Short waiting times are raised to the 3 s floor.
		{"T=0 floor", t0Timeout(372, 12, 0, 1, 40000), defaultTimeout},
		// T=1, Fi 512 Di 32, BWI 4 CWI 5, 4 MHz, plus 1 s.
		{"T=1", t1Timeout(512, 32, 0, 7, 5, 4000),
			ms(260*(12*512/32.0/4000)+(11*512/32.0/4000+128*960*372/4000.0)+260*(11+32)*512/32.0/4000) + time.Second},
		{"T=1 floor", t1Timeout(512, 32, 0, 4, 5, 4000), defaultTimeout},
		{"non-ISO ATR", cardTimeout(nil, 0, 0x11, 4000), nonISOTimeout},
		{"RFU TA1", cardTimeout(atr.MustParse("3b107f"), 0, 0x11, 4000), nonISOTimeout},
		{"no clock", t0Timeout(372, 1, 0, 10, 0), nonISOTimeout},
		{"no clock T=1", t1Timeout(372, 1, 0, 4, 13, 0), nonISOTimeout},
	} {
		if d := tc.got - tc.want; d < -time.Millisecond || d > time.Millisecond {
			t.Errorf("%s: %v, want %v", tc.name, tc.got, tc.want)
		}
	}
}

func TestSpeedCandidates(t *testing.T) {
	simATR := atr.MustParse("3b9f96801fc78031e073fe211b575352435653494da3")
	d := func(clock, max uint32) Descriptor { return Descriptor{DefaultClock: clock, MaxDataRate: max} }
	for _, tc := range []struct {
		name  string
		a     *atr.ATR
		d     Descriptor
		rates []uint32
		want  []byte
	}{
		{"fast reader", simATR, d(4000, 344105), nil, []byte{0x96, 0x95, 0x94, 0x93, 0x92, 0x11}},
		{"slow reader walks Di down", simATR, d(4000, 129032), nil, []byte{0x95, 0x94, 0x93, 0x92, 0x11}},
		{"rate list", simATR, d(4800, 825806), []uint32{300000, 75000}, []byte{0x96, 0x94, 0x11}},
		{"list within ±2 bit/s", simATR, d(4800, 825806), []uint32{300002}, []byte{0x96, 0x11}},
		{"no TA1", atr.MustParse("3b00"), d(4000, 344105), nil, []byte{0x11}},
		{"default TA1", atr.MustParse("3b1011"), d(4000, 344105), nil, []byte{0x11}},
		{"card slower than default", atr.MustParse("3b1010"), d(4000, 344105), nil, []byte{0x11}},
		{"RFU TA1", atr.MustParse("3b107f"), d(4000, 344105), nil, []byte{0x11}},
	} {
		got, err := speedCandidates(tc.a, tc.d, tc.rates)
		if err != nil || !bytes.Equal(got, tc.want) {
			t.Errorf("%s: % X %v, want % X", tc.name, got, err, tc.want)
		}
	}
	// Specific mode at a speed the reader lacks: refused.
	spec := atr.MustParse("3b 90 96 10 00")
	if _, err := speedCandidates(spec, d(4000, 129032), nil); !errors.Is(err, ErrUnsupported) {
		t.Errorf("specific mode: %v", err)
	}
}

func TestPPSMessages(t *testing.T) {
	if got := ppsRequest(0, 0x96); !bytes.Equal(got, []byte{0xFF, 0x10, 0x96, 0x79}) {
		t.Errorf("PPS T=0 96: % X", got)
	}
	if got := ppsRequest(1, 0x11); !bytes.Equal(got, []byte{0xFF, 0x01, 0xFE}) {
		t.Errorf("PPS T=1 default: % X", got)
	}
	req := ppsRequest(0, 0x96)
	for _, tc := range []struct {
		resp []byte
		ta1  byte
		ok   bool
	}{
		{req, 0x96, true},
		{[]byte{0xFF, 0x00, 0xFF}, 0x11, true}, // PPS1 not echoed: default speed
		{[]byte{0xFF, 0x10, 0x95, 0x7A}, 0, false},
		{[]byte{0xFF, 0x01, 0xFE}, 0, false},       // other protocol
		{[]byte{0xFF, 0x10, 0x96, 0x00}, 0, false}, // bad PCK
		{[]byte{0xFF}, 0, false},
		{[]byte{0x6D, 0x00}, 0, false},
		{append(req, 0), 0, false},
	} {
		ta1, ok := ppsAccepted(req, tc.resp)
		if ta1 != tc.ta1 || ok != tc.ok {
			t.Errorf("response % X: %02X %v", tc.resp, ta1, ok)
		}
	}
}

func TestParameters(t *testing.T) {
	a := atr.MustParse("3f c0 ff 40 20")
	if got := paramsT0(a, 0x11); !bytes.Equal(got, []byte{0x11, 0x02, 0xFF, 0x20, 0}) {
		t.Errorf("T=0: % X", got)
	}
	b := atr.MustParse("3b 90 97 91 11 71 20 75 01 a2")
	if got := paramsT1(b, 0x97); !bytes.Equal(got, []byte{0x97, 0x11, 0, 0x75, 0, 0x20, 0}) {
		t.Errorf("T=1: % X", got)
	}
	if got := paramsT1(nil, 0x11); !bytes.Equal(got, []byte{0x11, 0x10, 0, 0x4D, 0, 0x20, 0}) {
		t.Errorf("T=1 defaults: % X", got)
	}
}

func TestQuirks(t *testing.T) {
	d := applyQuirks(0x076b, 0x3021, Descriptor{Features: 0x000207B2, PINSupport: 3})
	if d.Features.ExchangeLevel() != LevelShortAPDU {
		t.Errorf("CardMan 3121 (no quirk): %v", d.Features.ExchangeLevel())
	}
	d = applyQuirks(0x076b, 0x3031, Descriptor{Features: 0x000207B2, PINSupport: 3})
	if d.Features.ExchangeLevel() != LevelExtendedAPDU || d.PINSupport != 0 || d.Features&0xFFFF != 0x07B2 {
		t.Errorf("OMNIKEY 3x21: %v", d)
	}
	d = applyQuirks(0x0d46, 0x3010, Descriptor{Features: 0x000407BA})
	if d.Features.ExchangeLevel() != LevelShortAPDU {
		t.Errorf("Kobil TriBank: %v", d.Features.ExchangeLevel())
	}
	d = applyQuirks(0x0b97, 0x7762, Descriptor{Features: 0x000100BA, MaxDataRate: 344105})
	if d.MaxDataRate != 9600 || !d.Features.Has(FeatureAutoPPSProp) {
		t.Errorf("OZ776: %v", d)
	}
}

func TestUevents(t *testing.T) {
	kernel := []byte("add@/devices/pci0000:00/0000:00:14.0/usb1/1-2\x00ACTION=add\x00DEVPATH=/devices/pci0000:00/0000:00:14.0/usb1/1-2\x00" +
		"SUBSYSTEM=usb\x00DEVTYPE=usb_device\x00PRODUCT=76b/3031/106\x00SEQNUM=4711\x00")
	ev, err := parseUevent(kernel)
	if err != nil || !ev.relevant() || ev.Action != "add" || ev.FromUdev || !strings.HasSuffix(ev.DevPath, "1-2") {
		t.Errorf("kernel: %+v %v", ev, err)
	}
	props := []byte("ACTION=remove\x00DEVPATH=/devices/x/1-2:1.0\x00SUBSYSTEM=usb\x00DEVTYPE=usb_interface\x00")
	udev := make([]byte, 40)
	copy(udev, "libudev\x00")
	udev[8], udev[9], udev[10], udev[11] = 0xfe, 0xed, 0xca, 0xfe
	udev[16], udev[20] = 40, byte(len(props))
	udev = append(udev, props...)
	ev, err = parseUevent(udev)
	if err != nil || !ev.relevant() || ev.Action != "remove" || !ev.FromUdev {
		t.Errorf("udev: %+v %v", ev, err)
	}
	for _, b := range [][]byte{
		[]byte("add@/devices/virtual/net/lo\x00ACTION=add\x00SUBSYSTEM=net\x00"),
		[]byte("change@/x\x00ACTION=change\x00SUBSYSTEM=usb\x00DEVTYPE=usb_endpoint\x00"),
	} {
		if ev, err := parseUevent(b); err != nil || ev.relevant() {
			t.Errorf("%q: %+v %v", b, ev, err)
		}
	}
	for _, b := range [][]byte{nil, []byte("garbage"), []byte("x@y\x00NOACTION=1"), udev[:30],
		append([]byte("libudev\x00\x00\x00\x00\x00"), make([]byte, 20)...)} {
		if _, err := parseUevent(b); err == nil {
			t.Errorf("%q accepted", b)
		}
	}
}

// datagrams is an io.Reader of whole datagrams, then err.
type datagrams struct {
	msgs [][]byte
	err  error
}

func (d *datagrams) Read(p []byte) (int, error) {
	if len(d.msgs) == 0 {
		return 0, d.err
	}
	n := copy(p, d.msgs[0])
	d.msgs = d.msgs[1:]
	return n, nil
}

func TestUeventLoop(t *testing.T) {
	changed := make(chan struct{}, 1)
	src := &datagrams{msgs: [][]byte{
		[]byte("garbage"),
		[]byte("add@/devices/virtual/net/lo\x00ACTION=add\x00SUBSYSTEM=net\x00"),
	}, err: io.ErrUnexpectedEOF}
	err := ueventLoop(context.Background(), src, changed, slog.New(slog.DiscardHandler))
	if !errors.Is(err, io.ErrUnexpectedEOF) || len(changed) != 0 {
		t.Errorf("irrelevant events: %v, %d changes", err, len(changed))
	}
	src = &datagrams{msgs: [][]byte{
		[]byte("add@/x\x00ACTION=add\x00SUBSYSTEM=usb\x00DEVTYPE=usb_device\x00"),
		[]byte("bind@/x\x00ACTION=bind\x00SUBSYSTEM=usb\x00DEVTYPE=usb_interface\x00"),
	}, err: io.EOF}
	if err := ueventLoop(context.Background(), src, changed, slog.New(slog.DiscardHandler)); !errors.Is(err, io.EOF) {
		t.Error(err)
	}
	if len(changed) != 1 {
		t.Error("no change signalled")
	}
}

// TestWatchUevents opens a real netlink socket where the sandbox allows
// it and checks that cancelling ctx ends the watch.
func TestWatchUevents(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- watchUevents(ctx, make(chan struct{}, 1), slog.New(slog.DiscardHandler)) }()
	select {
	case err := <-errc:
		t.Skipf("no netlink uevent socket here: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	cancel()
	if err := <-errc; err != nil {
		t.Errorf("watch ended with %v", err)
	}
}

func FuzzParseUevent(f *testing.F) {
	f.Add([]byte("add@/x\x00ACTION=add\x00SUBSYSTEM=usb\x00DEVTYPE=usb_device\x00"))
	f.Add(append([]byte("libudev\x00\xfe\xed\xca\xfe\x00\x00\x00\x00\x18\x00\x00\x00\x0b\x00\x00\x00"), "ACTION=add\x00"...))
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := parseUevent(b)
		if err == nil && ev.Action == "" {
			t.Fatal("event without action accepted")
		}
	})
}
