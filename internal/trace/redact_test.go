package trace

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// exch is one exchange of a redaction scenario and what must come out.
type exch struct {
	cmd, rsp string
	sw       uint16
	want     Redacted
}

// redactScenarios run in order on one card state, which starts knowing
// nothing (as for a card the tracer has not seen before).
var redactScenarios = []struct {
	name string
	ex   []exch
}{
	{"PIN commands", []exch{
		{"0020000108 31323334ffffffff", "", 0x9000, RedactedCommand},
		{"0020000100", "", 0x63c3, RedactedCommand}, // retry query: no data, still marked
		{"0024000110 31323334ffffffff 35363738ffffffff", "", 0x9000, RedactedCommand},
		{"0026000108 31323334ffffffff", "", 0x9000, RedactedCommand},
		{"0028000108 31323334ffffffff", "", 0x9000, RedactedCommand},
		{"002c000110 3132333435363738 31323334ffffffff", "", 0x9000, RedactedCommand},
		{"a020000108 31323334ffffffff", "", 0x9000, RedactedCommand}, // GSM class
		{"0021000104 00000000", "", 0x9000, RedactedCommand},
		{"0082000010 0011223344556677 8899aabbccddeeff", "", 0x9000, RedactedCommand},
	}},
	{"3G AUTHENTICATE, T=0 GET RESPONSE", []exch{
		{"0088008122 10 00112233445566778899aabbccddeeff 10 00112233445566778899aabbccddeeff", "", 0x6135, RedactedCommand | RedactedResponse},
		{"00c0000035", "db08 1122334455667788 10 00112233445566778899aabbccddeeff 10 00112233445566778899aabbccddeeff 08 0011223344556677", 0x9000, RedactedResponse},
		{"00c0000010", "", 0x6f00, 0}, // nothing pending any more
	}},
	{"AUTHENTICATE with data at once, GET RESPONSE on another channel", []exch{
		{"0088008111 10 00112233445566778899aabbccddeeff 00", "db04aabbccdd", 0x9000, RedactedCommand | RedactedResponse},
		{"01c0000010", "0102", 0x9000, RedactedResponse}, // channel 1 state not known yet
		{"00a40004023f00", "", 0x9000, 0},
		{"00c0000010", "", 0x6f00, 0},
	}},
	{"GSM RUN GSM ALGORITHM with 9F", []exch{
		{"a088000010 00112233445566778899aabbccddeeff", "", 0x9f0c, RedactedCommand | RedactedResponse},
		{"a0c000000c", "112233445566778899aabbcc", 0x9000, RedactedResponse},
		{"a0f2000016", "000000007f20020000000000000000000000000000000000", 0x9000, 0},
	}},
	{"identification reads stay readable", []exch{
		{"00a40004023f00", "", 0x6120, 0},
		{"00c0000020", "62 1e 8202782183023f00", 0x9000, 0}, // FCP after SELECT: not a secret
		{"00a40004022fe2", "", 0x9000, 0},
		{"00b000000a", "98001032547698103214", 0x9000, 0},
		{"00a4040010 a0000000871002ffffffff8907090000", "", 0x9000, 0},
		{"00a40004026f07", "", 0x9000, 0},
		{"00b0000009", "080910101032547698", 0x9000, 0},
	}},
	{"key files by FID and by SFI", []exch{
		{"00a4040010 a0000000871002ffffffff8907090000", "", 0x9000, 0},
		{"00a40004026f08", "", 0x9000, 0},
		{"00b0000021", "07 00112233445566778899aabbccddeeff 00112233445566778899aabbccddeeff", 0x9000, RedactedResponse},
		{"00d6000021 07 00112233445566778899aabbccddeeff 00112233445566778899aabbccddeeff", "", 0x9000, RedactedCommand},
		{"00a40004026fad", "", 0x9000, 0},
		{"00b0000004", "00000002", 0x9000, 0},
		{"00b0880021", "0700112233445566778899aabbccddeeff00112233445566778899aabbccddeeff", 0x9000, RedactedResponse}, // SFI 08 = EF.Keys
		{"00b0000021", "0700112233445566778899aabbccddeeff00112233445566778899aabbccddeeff", 0x9000, RedactedResponse}, // it is now current
		{"00b0830004", "00000002", 0x9000, 0},                                                                          // SFI 03 = EF.AD in the ADF
		{"00b000000a", "00000002000000000000", 0x9000, 0},
		{"00b201c436", "a0340000", 0x9000, RedactedResponse}, // EF.EPSNSC, SFI 18, record 1
		{"00a40004025fc0", "", 0x9000, 0},                    // DF.5GS
		{"00b0830044", "8020aaaa", 0x9000, RedactedResponse}, // SFI 03 here is EF.5GS3GPPNSC
		{"00a40804047fff5f3b", "", 0x9000, 0},                // path to DF.GSM-ACCESS
		{"00b0810009", "00112233445566778899", 0x9000, RedactedResponse},
		{"00a40804047fff6f07", "", 0x9000, 0},
		{"00b0000009", "080910101032547698", 0x9000, 0},
		{"00a40004024f20", "", 0x6a82, 0}, // not found: the current file stays EF.IMSI
		{"00b0000009", "080910101032547698", 0x9000, 0},
		{"00a40004024f20", "", 0x9000, 0},
		{"00b0000009", "00112233445566778899", 0x9000, RedactedResponse},
		{"00a40300", "", 0x9000, 0}, // parent: DF not known, no EF
		{"00b0000009", "", 0x6986, 0},
		{"00b0810009", "00112233445566778899", 0x9000, RedactedResponse}, // SFI 01 under an unknown DF
		{"00b1000000", "aa", 0x9000, RedactedResponse},                   // odd INS, current EF: the SFI 01 file
		{"00b16f0800", "aabb", 0x9000, RedactedResponse},                 // odd INS naming EF.Keys by FID
		{"00b16fad00", "aabb", 0x9000, 0},
		{"00b1000200", "aabb", 0x9000, RedactedResponse}, // odd INS with SFI 02
		{"00a40004026fad", "", 0x9000, 0},
		{"00d7000003 530130", "", 0x9000, 0},
	}},
	{"first events of an unknown card", []exch{
		{"00c0000010", "0011", 0x9000, RedactedResponse},
		{"00b0000009", "080910101032547698", 0x9000, RedactedResponse},
		{"00b2010400", "0011", 0x9000, RedactedResponse},
		{"00c0000010", "0011", 0x9000, 0}, // READ RECORD ended anything pending
	}},
	{"logical channels", []exch{
		{"00a40004023f00", "", 0x9000, 0},
		{"0070000000", "01", 0x9000, 0},
		{"01a40004026f08", "", 0x9000, 0},
		{"00b0000004", "", 0x6986, 0}, // channel 0 has no EF
		{"01b0000004", "aabbccdd", 0x9000, RedactedResponse},
		{"0070800100", "", 0x9000, 0},
		{"0070000100", "", 0x9000, 0}, // reopen 1 from 0: channel 0's state
		{"01b0000004", "", 0x6986, 0},
		{"40a40004026f09", "", 0x9000, 0}, // channel 4
		{"40b0000004", "aabbccdd", 0x9000, RedactedResponse},
		{"00b0000004", "", 0x6986, 0},
	}},
	{"GlobalPlatform", []exch{
		{"80d8018143 80100011223344556677 8899aabbccddeeff", "", 0x9000, RedactedCommand},
		{"8050000008 1122334455667788", "0000112233445566778899 ff020011223344556677 1122334455667788", 0x9000, RedactedResponse},
		{"8482010010 1122334455667788 1122334455667788", "", 0x9000, RedactedCommand},
		{"80e2900004 8002aabb", "", 0x9000, RedactedCommand},                                // GP personalisation
		{"00e2000004 01020304", "", 0x9000, 0},                                              // inter-industry APPEND RECORD
		{"00d8000002 0102", "", 0x6d00, 0},                                                  // D8 under an inter-industry class
		{"80f2000000", "", 0x9000, 0},                                                       // STATUS
		{"0050000000", "", 0x6d00, 0},                                                       // 50 under an inter-industry class
		{"80ca9f7f00", "9f7f2a00112233", 0x9000, 0},                                         // GET DATA CPLC
		{"8084000008", "1122334455667788", 0x9000, 0},                                       // GET CHALLENGE-like proprietary: not redacted
		{"80e2910003 bf3e00", "bf3e125a10" + "89049032123451234512345678901235", 0x9000, 0}, // GetEuiccData (EID)
		{"81e2910003 bf2d00", "bf2d00", 0x9000, 0},                                          // ProfileInfoList, channel 1
		{"80e2910006 bf2e03810100", "bf2e00", 0x9000, 0},
		{"80e2910005 bf2103aabbcc", "bf2100", 0x9000, RedactedCommand}, // PrepareDownload
		{"80e2910005 bf3803aabbcc", "bf3800", 0x9000, RedactedCommand}, // AuthenticateServer
		{"80e2110005 bf3e03aabbcc", "", 0x9000, RedactedCommand},       // more blocks follow: not single-block
		{"80e2910105 bf3e03aabbcc", "", 0x9000, RedactedCommand},       // block 1 of a longer one
		{"80e2910005 bf3603aabbcc", "", 0x9000, RedactedCommand},       // BoundProfilePackage
		{"80e2910005 bf9903aabbcc", "", 0x9000, RedactedCommand},       // not on the list
	}},
	{"an exchange without an answer", []exch{
		{"00a40004023f00", "", 0x9000, 0},
		{"00a40004022fe2", "", 0x9000, 0},
		{"00b000000a", "98001032547698103214", 0x9000, 0},
		{"00a40004026f08", "", 0x0000, 0},                      // no answer: was EF.Keys selected?
		{"00b0000021", "0700112233", 0x9000, RedactedResponse}, // assume so
		{"00a40004022fe2", "", 0x9000, 0},
		{"0020000108 31323334ffffffff", "", 0x0000, RedactedCommand}, // PIN without answer: still hidden
		{"00b000000a", "98001032547698103214", 0x9000, RedactedResponse},
	}},
	{"malformed and odd commands", []exch{
		{"0020", "", 0x6700, 0},
		{"002000", "", 0x6700, 0},
		{"00200001", "", 0x6700, RedactedCommand},
		{"0020000108 3132", "", 0x6700, RedactedCommand},            // Lc says 8, 2 bytes follow
		{"0020000100000431323334", "", 0x9000, RedactedCommand},     // extended
		{"00200001000004313233340000", "", 0x9000, RedactedCommand}, // extended with Le
		{"0088000000", "aabbccdd", 0x9000, RedactedCommand | RedactedResponse},
		{"00a4000002 3f", "", 0x9000, 0}, // malformed SELECT: state unknown
		{"00b0000001", "aa", 0x9000, RedactedResponse},
		{"00a4000000", "", 0x9000, 0}, // SELECT without data: MF
		{"00b0000001", "", 0x6986, 0},
		{"00a40800 03 3f002f", "", 0x9000, 0}, // odd path
		{"00b0000001", "aa", 0x9000, RedactedResponse},
		{"00a40900 00", "", 0x9000, 0},
		{"00b0000001", "aa", 0x9000, RedactedResponse},
		{"00a4ff0002 3f00", "", 0x9000, 0},
		{"00b0000001", "aa", 0x9000, RedactedResponse},
		{"00a40100 02 7fff", "", 0x9000, 0},
		{"00b0880001", "aa", 0x9000, RedactedResponse},
		{"00a40200 02 6fad", "", 0x9000, 0},
		{"00b0000001", "aa", 0x9000, 0},
		{"00a40200 01 6f", "", 0x9000, 0},
		{"00b0000001", "aa", 0x9000, RedactedResponse},
		{"00a40100 01 7f", "", 0x9000, 0},
		{"00b0810001", "aa", 0x9000, RedactedResponse},
		{"ff20000104 31323334", "", 0x6e00, RedactedCommand},
	}},
}

func TestRedactScenarios(t *testing.T) {
	for _, sc := range redactScenarios {
		t.Run(sc.name, func(t *testing.T) {
			st := new(cardState)
			for i, e := range sc.ex {
				cmd, rsp := unhex(t, e.cmd), unhex(t, e.rsp)
				origCmd, origRsp := bytes.Clone(cmd), bytes.Clone(rsp)
				got := redact(st, cmd, rsp, e.sw)
				if got != e.want {
					t.Errorf("#%d %s: redacted %q, want %q", i, e.cmd, got, e.want)
				}
				checkRedacted(t, origCmd, origRsp, cmd, rsp, got)
			}
		})
	}
}

// checkRedacted checks what redact did to one exchange against an
// oracle written apart from commandData: the header and length bytes are
// kept, the data part named by r is all 0xFF and nothing else changed.
func checkRedacted(t testing.TB, origCmd, origRsp, cmd, rsp []byte, r Redacted) {
	t.Helper()
	if len(cmd) != len(origCmd) || len(rsp) != len(origRsp) {
		t.Fatalf("lengths changed: cmd %d→%d, rsp %d→%d", len(origCmd), len(cmd), len(origRsp), len(rsp))
	}
	lo, hi := oracleData(origCmd)
	for i := range cmd {
		inData := i >= lo && i < hi
		switch {
		case r&RedactedCommand != 0 && inData:
			if cmd[i] != fill {
				t.Fatalf("cmd % x: byte %d = %02x after redaction (was % x)", cmd, i, cmd[i], origCmd)
			}
		case cmd[i] != origCmd[i]:
			t.Fatalf("cmd byte %d changed (%02x→%02x) outside redacted data: % x → % x", i, origCmd[i], cmd[i], origCmd, cmd)
		}
	}
	for i := range rsp {
		if r&RedactedResponse != 0 {
			if rsp[i] != fill {
				t.Fatalf("rsp byte %d = %02x after redaction", i, rsp[i])
			}
		} else if rsp[i] != origRsp[i] {
			t.Fatalf("rsp byte %d changed without redaction", i)
		}
	}
}

// oracleData returns the command data field's bounds by ISO/IEC 7816-3
// clause 12.1.3, or [5, len) when the lengths do not add up.
func oracleData(b []byte) (lo, hi int) {
	n := len(b)
	switch {
	case n <= 5:
		return 0, 0
	case b[4] != 0:
		nc := int(b[4])
		if n == 5+nc || n == 6+nc {
			return 5, 5 + nc
		}
	case n >= 7:
		nc := int(b[5])<<8 | int(b[6])
		if n == 7 {
			return 0, 0
		}
		if nc > 0 && (n == 7+nc || n == 9+nc) {
			return 7, 7 + nc
		}
	}
	return 5, n
}

// alwaysCmd and alwaysRsp are the instructions whose data the policy
// hides whatever the class byte and the state.
var (
	alwaysCmd = map[byte]bool{0x20: true, 0x21: true, 0x24: true, 0x26: true, 0x28: true, 0x2C: true,
		0x82: true, 0x86: true, 0x87: true, 0x88: true, 0x89: true}
	alwaysRsp = map[byte]bool{0x86: true, 0x87: true, 0x88: true, 0x89: true}
)

// FuzzRedact feeds a sequence of exchanges to one card state. Whatever
// the bytes, redact must not panic, must keep lengths, header and length
// bytes, and must never let a data byte of an always-redacted
// instruction through.
func FuzzRedact(f *testing.F) {
	for _, sc := range redactScenarios {
		var seq []byte
		for _, e := range sc.ex {
			seq = appendFuzzExchange(seq, unhex(f, e.cmd), unhex(f, e.rsp), e.sw)
		}
		f.Add(seq)
	}
	f.Fuzz(func(t *testing.T, seq []byte) {
		st := new(cardState)
		for len(seq) > 0 {
			var cmd, rsp []byte
			var sw uint16
			cmd, rsp, sw, seq = nextFuzzExchange(seq)
			origCmd, origRsp := bytes.Clone(cmd), bytes.Clone(rsp)
			r := redact(st, cmd, rsp, sw)
			checkRedacted(t, origCmd, origRsp, cmd, rsp, r)
			if len(cmd) >= 4 {
				if alwaysCmd[cmd[1]] && r&RedactedCommand == 0 {
					t.Fatalf("INS %02x: command not redacted", cmd[1])
				}
				if alwaysRsp[cmd[1]] && r&RedactedResponse == 0 {
					t.Fatalf("INS %02x: response not redacted", cmd[1])
				}
			}
		}
	})
}

// The fuzz sequence format: per exchange a command length byte, the
// command, a response length (2 bytes), the response, the SW.
func appendFuzzExchange(b, cmd, rsp []byte, sw uint16) []byte {
	b = append(b, byte(len(cmd)))
	b = append(b, cmd...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(rsp)))
	b = append(b, rsp...)
	return binary.BigEndian.AppendUint16(b, sw)
}

func nextFuzzExchange(b []byte) (cmd, rsp []byte, sw uint16, rest []byte) {
	take := func(n int) []byte {
		n = min(n, len(b))
		v := b[:n:n]
		b = b[n:]
		return v
	}
	cmd = bytes.Clone(take(int(take(1)[0])))
	var n int
	if l := take(2); len(l) == 2 {
		n = int(binary.BigEndian.Uint16(l))
	}
	rsp = bytes.Clone(take(n))
	if s := take(2); len(s) == 2 {
		sw = binary.BigEndian.Uint16(s)
	}
	return cmd, rsp, sw, b
}

func TestRedactedString(t *testing.T) {
	for r, want := range map[Redacted]string{0: "", RedactedCommand: "cmd", RedactedResponse: "rsp", RedactedCommand | RedactedResponse: "cmd+rsp"} {
		if got := r.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", r, got, want)
		}
	}
}

func TestRedactNilState(t *testing.T) {
	cmd := unhex(t, "0020000104 31323334")
	if r := redact(nil, cmd, nil, 0x9000); r != RedactedCommand || !bytes.Equal(cmd, unhex(t, "0020000104 ffffffff")) {
		t.Errorf("redact(nil state) = %v, % x", r, cmd)
	}
}

func TestResetState(t *testing.T) {
	st := new(cardState)
	st.reset()
	rsp := unhex(t, "aabb")
	if r := redact(st, unhex(t, "00b0000002"), rsp, 0x9000); r != 0 {
		t.Errorf("READ BINARY after reset: redacted %v (no EF is selected after an ATR)", r)
	}
	if r := redact(st, unhex(t, "01b0000002"), rsp, 0x9000); r != RedactedResponse {
		t.Errorf("channel 1 after reset: redacted %v, want rsp (closed, unknown)", r)
	}
}
