package sim

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/wsrc-go/wsrc/card"
)

func hx(s string) []byte { return mustHex(s) }

// exchange runs "cmd>resp" steps (hex, spaces allowed) through Process.
func exchange(t *testing.T, c *Card, steps ...string) {
	t.Helper()
	for _, s := range steps {
		cmd, want, ok := strings.Cut(s, ">")
		if !ok {
			t.Fatalf("bad step %q", s)
		}
		got := c.Process(hx(cmd))
		if hex.EncodeToString(got) != strings.ReplaceAll(want, " ", "") {
			t.Errorf("%s:\n got %x\nwant %s", cmd, got, want)
		}
	}
}

const (
	mfFCP    = "62208202782183023f00a5038001718a01058b032f0601c60990014083010183010a"
	iccidFCP = "62178202412183022fe28a01058b032f06038002000a880110"
	iccidEF  = "989444000000115513f4"
	dirFCP   = "621a8205422100260183022f008a01058b032f0601800200268801f0"
	usimDIR  = "61184f10a0000000871002ffffffff890709000050045553494dffffffffffffffffffffffff"
)

func TestErrors(t *testing.T) {
	c := New(Config{})
	exchange(t, c,
		"00>6700",
		"00a4000002ab>6700",
		"a0a40000023f00>6e00",
		"ffa40000023f00>6e00",
		"01a40000023f00>6881",
		"04a40000023f00>6882",
		"80a40000023f00>6e00",
		"00f2000000>6e00",
		"00ff000000>6d00",
		"00a40000027f20>6a82",
		"00a4000003 3f0000>6700",
		"00b0000010>6986", // nothing selected after power-up
		"00a41000023f00>6a86",
		"00a40500023f00>6a86",
		"00a40002023f00>6a86",
		"00a40402023f00>6a82",
		"00a4040c05a000000000>6a82",
		"00c0000010>6985",
		"00c0010010>6a86",
		"80e2910006bf3e035c015a>6d00", // ISD-R not selected
		"00a4000c022fe2>9000",
		"00b0000b01>6b00",
		"00b00000>6700",
		"00b0000001ff00>6700",
		"00b2010400>6981",
		"00d6000001ff>6982",
		"00b0a00000>6a86",
		"00b0800000>6a86",
		"00b0870000>6a82",
		"00a4000c022f00>9000",
		"00b2020426>6a83",
		"00b2010000>6a86",
		"00b2010126>6a86",
		"00b2010410>6c26",
		"00b0000001>6981",
		"00a4040410a0000005591010ffffffff8900000100>6f2e8410a0000005591010ffffffff8900000100a51a730906072a864886fc6b019f6e0800000000000000009f6501ff9000",
		"80e2110006bf3e035c015a>6a86",
		"80e2910000>6a80",
		"00b0000001>6986",
		"00a4030000>6a82",
		"80f2000100>84 10 a0000005591010ffffffff8900000100 9000",
	)
	exchange(t, New(Config{EID: NoEID}),
		"00a4040410a0000005591010ffffffff8900000100>6a82",
		"00a4040007a000000087100200>6a82",
	)
}

func TestSelectAndRead(t *testing.T) {
	c := New(Config{USIM: true, IMSI: "001010123456789"})
	exchange(t, c,
		// SFI addressing selects the EF.
		"00b0820000>"+iccidEF+"9000",
		"00b0820505>00115513f49000",
		"00b201f400>"+usimDIR+"9000",
		// EF.DIR now names ADF.USIM.
		"00a40004022f0000>"+dirFCP+"9000",
		"00b2010426>"+usimDIR+"9000",
		"00b2000426>"+usimDIR+"9000",
		"00b2020426>6a83",
		// By path from the MF, with or without 3F00.
		"00a4080c022fe2>9000",
		"00a40804043f002fe2>"+iccidFCP+"9000",
		"00a4080c047fff6f07>6a82",
		"00a4080c03 2fe200>6700",
		"00a4080c042fe26f07>6a82",
		// Partial AID selects ADF.USIM; then FID and relative path.
		"00a4040c07a0000000871002>9000",
		"00a40004026f0700>62178202412183026f078a01058b032f0602800200098801389000",
		"00b0000009>0809101010325476989000",
		"00a4090c027fff>9000",
		"00a4090c026fad>9000",
		"00b0000000>000000029000",
		"00a4000c027fff>9000",
		"00a4000c026f07>9000",
		"00a40300 00>"+mfFCP+"9000",
	)
	adf := c.Process(hx("00a40004027fff00"))
	if !bytes.HasPrefix(adf, hx("62")) || !bytes.Contains(adf, append([]byte{0x84, 0x10}, AIDUSIM...)) ||
		!bytes.HasSuffix(adf, hx("9000")) {
		t.Errorf("ADF.USIM FCP %x", adf)
	}
	exchange(t, c, "80f2000100>8410"+hex.EncodeToString(AIDUSIM)+"9000", "80f2000c00>9000", "80f2030000>6a86", "80f2000200>6a86")
}

func TestLargeEF(t *testing.T) {
	for _, t0 := range []bool{false, true} {
		c := New(Config{T0GetResponse: t0})
		exchange(t, c, "00a4000c026f99>9000")
		// Extended Le=0000: the whole 4000-byte EF in one response.
		r := c.Process(hx("00b00000000000"))
		data, sw, err := card.SplitResponse(r)
		if err != nil || sw != 0x9000 || len(data) != BigEFSize {
			t.Fatalf("T0=%v extended read: %d bytes, %04x, %v", t0, len(data), sw, err)
		}
		for i, b := range data {
			if b != byte(i%251) {
				t.Fatalf("byte %d = %02x", i, b)
			}
		}
		tail := hex.EncodeToString(data[3990:]) + "9000" // offset 3990, Le 32: 10 left
		if t0 {
			tail = "6c0a"
		}
		exchange(t, c,
			"00b00f9620>"+tail,
			"00b00fa000>6b00",
			"00b0000000>"+hex.EncodeToString(data[:256])+"9000",
		)
		// UPDATE BINARY with 300 bytes needs the extended form.
		upd := card.Command{INS: 0xd6, P1: 0x00, P2: 0x64, Data: bytes.Repeat([]byte{0x5a}, 300)}
		exchange(t, c,
			hex.EncodeToString(upd.Bytes())+">9000",
			"00b0006400012c>"+strings.Repeat("5a", 300)+"9000",
			"00d60f9f0000020102>6700", // 2 bytes at 3999
			"00d60fa001ff>6b00",
			"00d6000000>6700",
		)
		// Contents survive a reset, selection does not.
		if _, err := c.Reset(context.Background(), card.ColdReset); err != nil {
			t.Fatal(err)
		}
		exchange(t, c, "00b0006401>6986", "00a4000c026f99>9000", "00b0006401>5a9000")
	}
}

func TestT0Delivery(t *testing.T) {
	c := New(Config{T0GetResponse: true})
	exchange(t, c,
		"00a40000023f00>6122",
		"00c0000040>6c22", // wrong Le keeps the data
		"00c0000010>"+mfFCP[:32]+"6112",
		"00c0000012>"+mfFCP[32:]+"9000",
		"00c0000012>6985",
		"00a40004022fe200>6119",
		"00b0000000>6c0a", // a new command drops what was pending
		"00c0000019>6985",
		"00b000000a>"+iccidEF+"9000",
		"00b0000005>9894440000 9000",
		"80f2000000>6c22",
		"80f2000022>"+mfFCP+"9000",
		"00a4000c022fe2>9000",
		"00a4000c022fe2 00>9000",
	)
	// Extended commands are not subject to T=0 rules.
	exchange(t, c, "00a40004 000002 2fe2 0000>"+iccidFCP+"9000")
}

func TestDirectDelivery(t *testing.T) {
	c := New(Config{})
	exchange(t, c,
		"00a40004022fe205>"+iccidFCP[:10]+"6114",
		"00c0000004>"+iccidFCP[10:18]+"6110",
		"00c0000000>"+iccidFCP[18:]+"9000",
		"80f2000000>"+mfFCP+"9000",
		"00b0000020>"+iccidEF+"9000",
	)
	r, err := card.TransmitFollow(context.Background(), c, hx("00a40004022fe201"))
	if err != nil || hex.EncodeToString(r) != iccidFCP+"9000" {
		t.Errorf("TransmitFollow: %x, %v", r, err)
	}
}

func TestCardInterface(t *testing.T) {
	ctx := context.Background()
	c := New(Config{})
	if hex.EncodeToString(c.ATR()) != "3b9f96801fc78031e073fe211b575352435653494da3" {
		t.Errorf("ATR %x", c.ATR())
	}
	c.ATR()[0] = 0 // a copy
	r, err := c.Transmit(ctx, hx("00a4000c022fe2"))
	if err != nil || hex.EncodeToString(r) != "9000" {
		t.Fatalf("%x %v", r, err)
	}
	atr, err := c.Reset(ctx, card.WarmReset)
	if err != nil || !bytes.Equal(atr, ATRT0) {
		t.Fatalf("reset: %x %v", atr, err)
	}
	exchange(t, c, "00b000000a>6986")

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := c.Transmit(cctx, hx("00a40000023f00")); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled Transmit: %v", err)
	}
	if _, err := c.Reset(cctx, card.ColdReset); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled Reset: %v", err)
	}

	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
	if _, err := c.Transmit(ctx, hx("00a40000023f00")); !errors.Is(err, card.ErrClosed) {
		t.Errorf("Transmit after Close: %v", err)
	}
	if _, err := c.Reset(ctx, card.WarmReset); !errors.Is(err, card.ErrClosed) {
		t.Errorf("Reset after Close: %v", err)
	}
	exchange(t, c, "00a4000c023f00>9000") // Process ignores Close
}

func TestATRT1(t *testing.T) {
	c := New(Config{Protocol: T1})
	atr := c.ATR()
	var x byte
	for _, b := range atr[1:] {
		x ^= b
	}
	if x != 0 {
		t.Errorf("TCK wrong: %x", atr)
	}
	// TS, T0 (TA1, TD1, 15 historical bytes), TA1, TD1 (TD2, T=1),
	// TD2 (TA3, TB3, T=1), TA3, TB3, historical bytes, TCK.
	if len(atr) != 2+1+1+1+2+15+1 || atr[1] != 0x9f || atr[3]&0x0f != 1 || atr[4]&0x0f != 1 {
		t.Errorf("structure: %x", atr)
	}
	if !bytes.Equal(atr[7:22], ATRT0[6:21]) {
		t.Errorf("historical bytes differ: %x", atr)
	}
	if got := New(Config{ATR: hx("3b00")}).ATR(); !bytes.Equal(got, hx("3b00")) {
		t.Errorf("custom ATR %x", got)
	}
	if Protocol(7).String() != "Protocol(7)" || T1.String() != "T=1" {
		t.Error("Protocol.String")
	}
}

func TestConfig(t *testing.T) {
	for _, bad := range []Config{
		{ICCID: "89x"},
		{ICCID: "894944000000115531412"},
		{EID: "8904903212345123451234567890123"},
		{EID: "8904903212345123451234567890123z"},
		{IMSI: "0010101234567890"},
		{ISDRAID: []byte{0xa0, 0x00}},
		{IMSI: "00101a"},
		{ATR: []byte{0x3b}},
		{ATR: make([]byte, 34)},
		{Protocol: 2},
	} {
		if err := bad.Validate(); err == nil {
			t.Errorf("%+v: no error", bad)
		}
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%+v: New did not panic", bad)
				}
			}()
			New(bad)
		}()
	}
	for _, tc := range []struct {
		cfg  Config
		want card.Identity
	}{
		{Config{}, card.Identity{EID: DefaultEID, ICCID: DefaultICCID}},
		{Config{EID: NoEID, ICCID: "8949440000001155314F"}, card.Identity{ICCID: DefaultICCID}},
		{Config{USIM: true, EID: strings.ToUpper("89049032123451234512345678901abc")},
			card.Identity{EID: "89049032123451234512345678901abc", ICCID: DefaultICCID, IMSI: DefaultIMSI}},
		{Config{USIM: true, IMSINeedsPIN: true}, card.Identity{EID: DefaultEID, ICCID: DefaultICCID}},
		{Config{ISDRAID: card.ISDRAlternatives[1]}, card.Identity{EID: DefaultEID, ICCID: DefaultICCID}},
	} {
		c := New(tc.cfg)
		if c.Identity() != tc.want {
			t.Errorf("%+v: Identity %+v, want %+v", tc.cfg, c.Identity(), tc.want)
		}
		id, err := card.Identify(context.Background(), c)
		if err != nil || id != tc.want {
			t.Errorf("%+v: Identify %+v, %v", tc.cfg, id, err)
		}
	}
}

// TestConcurrent runs identification from several goroutines at once:
// the race detector checks the locking; each answer must be well formed.
func TestConcurrent(t *testing.T) {
	c := New(Config{T0GetResponse: true})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 50 {
				if _, err := card.TransmitFollow(context.Background(), c, hx("00a40000023f00")); err != nil {
					t.Error(err)
					return
				}
				if r := c.Process(hx("00b0000000")); len(r) < 2 {
					t.Errorf("response %x", r)
					return
				}
			}
		})
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range 50 {
			if _, err := c.Reset(context.Background(), card.WarmReset); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	wg.Wait()
}

// FuzzProcess: any APDU sequence gets a well-formed answer and leaves the
// card able to identify itself after a reset.
func FuzzProcess(f *testing.F) {
	for _, s := range []string{
		"00a40000023f00", "00a4040410a0000005591010ffffffff8900000100", "80e2910006bf3e035c015a",
		"00b0000000", "00b2010426", "00c0000010", "00d6000000000101ff", "00a4080c022fe2", "80f2000000",
	} {
		f.Add(hx(s), true)
		f.Add(hx(s), false)
	}
	f.Fuzz(func(t *testing.T, cmd []byte, t0 bool) {
		c := New(Config{T0GetResponse: t0, USIM: true})
		for _, prefix := range []string{"", "00a4000c022fe2", "00a4040410a0000005591010ffffffff8900000100", "00a4040c07a0000000871002"} {
			if prefix != "" {
				c.Process(hx(prefix))
			}
			for range 2 {
				r := c.Process(cmd)
				if len(r) < 2 {
					t.Fatalf("%x: response %x", cmd, r)
				}
			}
		}
		if _, err := c.Reset(context.Background(), card.WarmReset); err != nil {
			t.Fatal(err)
		}
		id, err := card.Identify(context.Background(), c)
		want := c.Identity()
		if err != nil || id != want {
			t.Fatalf("after %x: Identify %+v, %v", cmd, id, err)
		}
	})
}
