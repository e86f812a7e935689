package card

import (
	"context"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

// script is a Transmitter that expects exactly the given exchanges:
// "cmd>resp" pairs in hex; cmd "*" accepts any command.
type script struct {
	t     *testing.T
	steps []string
	n     int
}

func (s *script) Transmit(ctx context.Context, cmd []byte) ([]byte, error) {
	s.t.Helper()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if s.n >= len(s.steps) {
		s.t.Fatalf("unexpected command %x after the script ended", cmd)
	}
	want, resp, _ := strings.Cut(s.steps[s.n], ">")
	s.n++
	if want != "*" && hex.EncodeToString(cmd) != want {
		s.t.Fatalf("exchange %d: sent %x, want %s", s.n, cmd, want)
	}
	if resp == "ERR" {
		return nil, errLink
	}
	return h(resp), nil
}

func (s *script) done() {
	s.t.Helper()
	if s.n != len(s.steps) {
		s.t.Errorf("script stopped after %d of %d exchanges", s.n, len(s.steps))
	}
}

var errLink = errors.New("link down")

func TestTransmitFollow(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cmd   string
		steps []string
		want  string
	}{
		{"plain", "00b000000a", []string{"00b000000a>01029000"}, "01029000"},
		{"error", "00a40000027f20", []string{"00a40000027f20>6a82"}, "6a82"},
		{"61 chain", "00a4000c023f00", []string{
			"00a4000c023f00>6103",
			"00c0000003>aabbcc6102",
			"00c0000002>dddd9000",
		}, "aabbccdddd9000"},
		{"9F like 61", "a0a40000023f00", []string{"a0a40000023f00>9f02", "a0c0000002>01029000"}, "01029000"},
		{"GET RESPONSE keeps CLA", "80e2910006bf3e035c015a", []string{
			"80e2910006bf3e035c015a>6115", "80c0000015>" + strings.Repeat("ab", 0x15) + "9000",
		}, strings.Repeat("ab", 0x15) + "9000"},
		{"6C re-issue", "00b0000000", []string{"00b0000000>6c0a", "00b000000a>989444000000115513f49000"}, "989444000000115513f49000"},
		{"6C keeps data", "00a40004022f0000", []string{"00a40004022f0000>6c1c", "00a40004022f001c>0102039000"}, "0102039000"},
		{"6C00 means 256", "00b0000001", []string{"00b0000001>6c00", "00b0000000>9000"}, "9000"},
		{"6C on GET RESPONSE", "00a40000023f00", []string{
			"00a40000023f00>6122", "00c0000022>6c10", "00c0000010>aa9000",
		}, "aa9000"},
		{"61 after 6C", "00b0000000", []string{"00b0000000>6c05", "00b0000005>aa6101", "00c0000001>bb9000"}, "aabb9000"},
		{"63Cx untouched", "0020000108" + strings.Repeat("31", 8), []string{"*>63c2"}, "63c2"},
		{"6282 untouched", "00b0000010", []string{"*>01026282"}, "01026282"},
		{"malformed sent as is", "00a4000002ab", []string{"00a4000002ab>6700"}, "6700"},
		{"malformed 6C keeps header", "00a4000002ab", []string{"00a4000002ab>6c02", "00a4000002>01029000"}, "01029000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &script{t: t, steps: tc.steps}
			got, err := TransmitFollow(context.Background(), s, h(tc.cmd))
			if err != nil {
				t.Fatal(err)
			}
			if hex.EncodeToString(got) != tc.want {
				t.Errorf("got %x, want %s", got, tc.want)
			}
			s.done()
		})
	}
}

func TestTransmitFollowErrors(t *testing.T) {
	ctx := context.Background()
	if _, err := TransmitFollow(ctx, &script{t: t}, h("00a400")); !errors.Is(err, ErrMalformedAPDU) {
		t.Errorf("3-byte command: %v", err)
	}
	s := &script{t: t, steps: []string{"*>ERR"}}
	if _, err := TransmitFollow(ctx, s, h("00b0000000")); !errors.Is(err, errLink) {
		t.Errorf("link error: %v", err)
	}
	s = &script{t: t, steps: []string{"*>6110", "00c0000010>ERR"}}
	if _, err := TransmitFollow(ctx, s, h("00b0000000")); !errors.Is(err, errLink) || !strings.Contains(err.Error(), "following 00c0") {
		t.Errorf("link error on GET RESPONSE: %v", err)
	}
	s = &script{t: t, steps: []string{"*>90"}}
	if _, err := TransmitFollow(ctx, s, h("00b0000000")); !errors.Is(err, ErrShortResponse) {
		t.Errorf("1-byte response: %v", err)
	}
	endless := transmitterFunc(func(context.Context, []byte) ([]byte, error) { return h("aa6101"), nil })
	if _, err := TransmitFollow(ctx, endless, h("00b0000000")); !errors.Is(err, ErrFollowLimit) {
		t.Errorf("endless 61xx: %v", err)
	}
	endless6C := transmitterFunc(func(context.Context, []byte) ([]byte, error) { return h("6c01"), nil })
	if _, err := TransmitFollow(ctx, endless6C, h("00b0000000")); !errors.Is(err, ErrFollowLimit) {
		t.Errorf("endless 6Cxx: %v", err)
	}
}

type transmitterFunc func(context.Context, []byte) ([]byte, error)

func (f transmitterFunc) Transmit(ctx context.Context, cmd []byte) ([]byte, error) {
	return f(ctx, cmd)
}

const (
	eidResp   = "bf3e125a1089049032123451234512345678901235"
	iccidResp = "989444000000115513f4"
	// usimRecord is an EF.DIR record naming ADF.USIM (card/sim's).
	usimRecord = "611a4f10a0000000871002ffffffff890709000050045553494dffffffffffffffffffffff"
	imsiResp   = "080910101032547698" // 001010123456789

)

// TestIdentifyServerRules checks pySim's server-side GET RESPONSE rules
// (CardClient.xceive_apdu) exchange by exchange.
func TestIdentifyServerRules(t *testing.T) {
	for _, tc := range []struct {
		name  string
		steps []string
		want  Identity
	}{
		{"recorded card", []string{
			"00a4040410a0000005591010ffffffff8900000100>6f9000",
			"80e2910006bf3e035c015a>" + eidResp + "9000",
			"00a40000023f00>629000", "00a40000022fe2>629000",
			"00b0000000>" + iccidResp + "9000",
			"00b201f400>6a83",
		}, Identity{EID: "89049032123451234512345678901235", ICCID: "8949440000001155314"}},
		{"plain UICC", []string{
			"00a4040410a0000005591010ffffffff8900000100>6a82",
			"00a40000023f00>629000", "00a40000022fe2>629000",
			"00b0000000>" + iccidResp + "9000",
			"00b201f400>6a83", "00a4040410a0000005591010ffffffff890005050000>6a82", "00a4040410a000000559101000000000890000030000>6a82", "00a4040410a0000005591010ffffffff890000017700>6a82",
		}, Identity{ICCID: "8949440000001155314"}},
		{"GET EID fails", []string{
			"00a4040410a0000005591010ffffffff8900000100>9000",
			"80e2910006bf3e035c015a>6a88",
			"00a40000023f00>9000", "00a40000022fe2>9000",
			"00b0000000>" + iccidResp + "9000",
			"00b201f400>6a83", // the ISD-R is there: no alternatives
		}, Identity{ICCID: "8949440000001155314"}},
		{"IMSI: USIM in EF.DIR record 2, T=0 (6C and 61)", []string{
			"00a4040410a0000005591010ffffffff8900000100>6f9000",
			"80e2910006bf3e035c015a>" + eidResp + "9000",
			"00a40000023f00>629000", "00a40000022fe2>629000",
			"00b0000000>" + iccidResp + "9000",
			"00b201f400>6c26", "00b201f426>" + strings.Repeat("ff", 38) + "9000",
			"00b202f400>6c26", "00b202f426>" + usimRecord + "9000",
			"00a4040c10a0000000871002ffffffff8907090000>9000",
			"00b0870009>6109", "00c0000009>" + imsiResp + "9000",
		}, Identity{EID: "89049032123451234512345678901235", ICCID: "8949440000001155314", IMSI: "001010123456789"}},
		{"IMSI wants a PIN: no IMSI, not an error", []string{
			"00a4040410a0000005591010ffffffff8900000100>6f9000",
			"80e2910006bf3e035c015a>" + eidResp + "9000",
			"00a40000023f00>629000", "00a40000022fe2>629000",
			"00b0000000>" + iccidResp + "9000",
			"00b201f400>" + usimRecord + "9000",
			"00a4040c10a0000000871002ffffffff8907090000>9000",
			"00b0870009>6982",
		}, Identity{EID: "89049032123451234512345678901235", ICCID: "8949440000001155314"}},
		{"no EF.DIR: USIM by the AID prefix", []string{
			"00a4040410a0000005591010ffffffff8900000100>6f9000",
			"80e2910006bf3e035c015a>" + eidResp + "9000",
			"00a40000023f00>629000", "00a40000022fe2>629000",
			"00b0000000>" + iccidResp + "9000",
			"00b201f400>6a82",
			"00a4040c07a0000000871002>9000",
			"00b0870009>" + imsiResp + "9000",
		}, Identity{EID: "89049032123451234512345678901235", ICCID: "8949440000001155314", IMSI: "001010123456789"}},
		{"no USIM listed: no IMSI", []string{
			"00a4040410a0000005591010ffffffff8900000100>6f9000",
			"80e2910006bf3e035c015a>" + eidResp + "9000",
			"00a40000023f00>629000", "00a40000022fe2>629000",
			"00b0000000>" + iccidResp + "9000",
			"00b201f400>" + strings.Repeat("ff", 38) + "9000", "00b202f400>" + strings.Repeat("ff", 38) + "9000",
			"00b203f400>" + strings.Repeat("ff", 38) + "9000", "00b204f400>" + strings.Repeat("ff", 38) + "9000",
		}, Identity{EID: "89049032123451234512345678901235", ICCID: "8949440000001155314"}},
		{"garbled EF.IMSI: no IMSI", []string{
			"00a4040410a0000005591010ffffffff8900000100>6f9000",
			"80e2910006bf3e035c015a>" + eidResp + "9000",
			"00a40000023f00>629000", "00a40000022fe2>629000",
			"00b0000000>" + iccidResp + "9000",
			"00b201f400>" + usimRecord + "9000",
			"00a4040c10a0000000871002ffffffff8907090000>9000",
			"00b0870009>ff9000",
		}, Identity{EID: "89049032123451234512345678901235", ICCID: "8949440000001155314"}},
		{"eSIM.me v2 ISD-R after the standard one is refused", []string{
			"00a4040410a0000005591010ffffffff8900000100>6a82",
			"00a40000023f00>9000", "00a40000022fe2>9000",
			"00b0000000>" + iccidResp + "9000",
			"00b201f400>6a83",
			"00a4040410a0000005591010ffffffff890005050000>6a82",
			"00a4040410a000000559101000000000890000030000>6f9000",
			"80e2910006bf3e035c015a>" + eidResp + "9000",
		}, Identity{EID: "89049032123451234512345678901235", ICCID: "8949440000001155314"}},
		{"alternative ISD-R found but GET EID refused", []string{
			"00a4040410a0000005591010ffffffff8900000100>6a82",
			"00a40000023f00>9000", "00a40000022fe2>9000",
			"00b0000000>" + iccidResp + "9000",
			"00b201f400>6a83",
			"00a4040410a0000005591010ffffffff890005050000>9000",
			"80e2910006bf3e035c015a>6a80",
		}, Identity{ICCID: "8949440000001155314"}},
		{"nothing", []string{
			"00a4040410a0000005591010ffffffff8900000100>6d00",
			"00a40000023f00>6a82",
		}, Identity{}},
		{"no EF.ICCID", []string{
			"00a4040410a0000005591010ffffffff8900000100>6a82",
			"00a40000023f00>9000", "00a40000022fe2>6a82",
		}, Identity{}},
		{"61, 9F, 62, 63 all followed with the first CLA", []string{
			"00a4040410a0000005591010ffffffff8900000100>6101",
			"00c0000001>aa9f02", "00c0000002>bbbb6203", "00c0000003>cccccc63c1", "00c00000c1>9000",
			"80e2910006bf3e035c015a>6115", "80c0000015>" + eidResp + "9000",
			"00a40000023f00>6122", "00c0000022>9000",
			"00a40000022fe2>9000",
			"00b0000000>6c0a", "00b000000a>" + iccidResp + "9000",
			"00b201f400>6a83",
		}, Identity{EID: "89049032123451234512345678901235", ICCID: "8949440000001155314"}},
		{"6C after GET RESPONSE re-issues the GET RESPONSE, replacing data", []string{
			"00a4040410a0000005591010ffffffff8900000100>6a82",
			"00a40000023f00>aa6110", "00c0000010>6c05", "00c0000005>bb9000",
			"00a40000022fe2>9000",
			"00b0000000>" + iccidResp + "6c0a", "00b000000a>" + iccidResp + "9000",
			"00b201f400>6a83", "00a4040410a0000005591010ffffffff890005050000>6a82", "00a4040410a000000559101000000000890000030000>6a82", "00a4040410a0000005591010ffffffff890000017700>6a82",
		}, Identity{ICCID: "8949440000001155314"}},
		{"6C is not followed after its re-issue", []string{
			"00a4040410a0000005591010ffffffff8900000100>6a82",
			"00a40000023f00>9000", "00a40000022fe2>9000",
			"00b0000000>6c0a", "00b000000a>6105",
		}, Identity{}},
		{"short EID data kept whole, ICCID f-stripped", []string{
			"00a4040410a0000005591010ffffffff8900000100>9000",
			"80e2910006bf3e035c015a>01029000",
			"00a40000023f00>9000", "00a40000022fe2>9000",
			"00b0000000>ffffffff9000",
		}, Identity{EID: "0102"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &script{t: t, steps: tc.steps}
			id, err := Identify(context.Background(), s)
			if err != nil {
				t.Fatal(err)
			}
			if id != tc.want {
				t.Errorf("Identify = %+v, want %+v", id, tc.want)
			}
			s.done()
		})
	}
}

func TestIdentifyErrors(t *testing.T) {
	ctx := context.Background()
	s := &script{t: t, steps: []string{"*>ERR"}}
	if _, err := Identify(ctx, s); !errors.Is(err, errLink) || !strings.Contains(err.Error(), "reading EID") {
		t.Errorf("link error: %v", err)
	}
	s = &script{t: t, steps: []string{"*>6a82", "*>90"}}
	if _, err := Identify(ctx, s); !errors.Is(err, ErrShortResponse) || !strings.Contains(err.Error(), "reading ICCID") {
		t.Errorf("short response: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := Identify(cctx, &script{t: t, steps: []string{"*>9000"}}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
	// An endless 61xx chain fails the step, not the identification.
	n := 0
	endless := transmitterFunc(func(_ context.Context, cmd []byte) ([]byte, error) {
		n++
		if cmd[1] == 0xa4 && cmd[4] == 0x10 || cmd[1] == 0xc0 {
			return h("6101"), nil
		}
		return h("6a82"), nil
	})
	id, err := Identify(ctx, endless)
	if err != nil || id != (Identity{}) {
		t.Errorf("endless chain: %+v, %v", id, err)
	}
	if n != MaxFollow+1 {
		t.Errorf("%d exchanges, want %d", n, MaxFollow+1)
	}
}
