package daemon

import (
	"encoding/hex"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/wsrc-go/wsrc/card/sim"
	"github.com/wsrc-go/wsrc/internal/trace"
	"github.com/wsrc-go/wsrc/internal/trace/tracetest"
	"github.com/wsrc-go/wsrc/server"
)

// pin is the PIN the tests send in VERIFY: "9361" in ASCII.
const pin = "39333631"

// APDUs relayed through the real server with --trace-pcap land in the
// pcap file, which tshark decodes as GSM SIM, with the PIN redacted
// (and, as the control, not redacted with --trace-no-redact).
func TestTracePcap(t *testing.T) {
	tracetest.Require(t)
	for _, redacted := range []bool{true, false} {
		name := "redacted"
		if !redacted {
			name = "unredacted"
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			pcap, perCard := filepath.Join(dir, "all.pcap"), filepath.Join(dir, "cards")
			args := []string{"--trace-pcap", pcap, "--trace-dir", perCard, "--trace-log", "--trace-card", sim.DefaultICCID}
			if !redacted {
				args = append(args, "--trace-no-redact")
			}
			s, o, ex := testSettings(t, "", args...)
			r := start(t, s, o, ex)
			simAgent(t, r.card, "pi")
			r.log.waitFor(t, "card ready", 1)
			user := dialUser(t, r.user)
			transmit(t, user, "00a40004023f00", "00a40004022fe2", "00b000000a", "0020000108"+pin+"ffffffff")
			if _, err := user.Reset(t.Context()); err != nil {
				t.Fatal(err)
			}
			if got := value(t, scrape(t, r.status), "wsrc_server_trace_dropped_total"); got != 0 {
				t.Errorf("%v events dropped", got)
			}
			r.stop(t) // the tracer is closed after the relay

			fields := tracetest.Tshark(t, "-r", pcap, "-T", "fields", "-E", "separator=|",
				"-e", "frame.protocols", "-e", "gsm_sim.apdu.ins", "-e", "gsm_sim.apdu.sw")
			lines := strings.Split(strings.TrimSpace(fields), "\n")
			// The selection (--trace-card ICCID) starts once the ICCID is
			// known: the user's four exchanges, not the identification.
			want := []string{"0xa4", "0xa4", "0xb0", "0x20"}
			if len(lines) != len(want) {
				t.Fatalf("tshark sees %d packets, want %d:\n%s", len(lines), len(want), fields)
			}
			for i, l := range lines {
				f := strings.Split(l, "|")
				if f[0] != "raw:ip:udp:gsmtap:gsm_sim" || f[1] != want[i] {
					t.Errorf("packet %d: %s, want gsm_sim INS %s", i+1, l, want[i])
				}
			}
			verbose := tracetest.Tshark(t, "-r", pcap, "-V", "-x")
			if !strings.Contains(verbose, "Instruction: VERIFY CHV (0x20)") || !strings.Contains(verbose, "File ID: EF.ICCID (0x2fe2)") {
				t.Errorf("tshark -V:\n%s", verbose)
			}
			payloads := tracetest.Tshark(t, "-r", pcap, "-T", "fields", "-e", "udp.payload")
			shown := strings.Contains(verbose, "39 33 36 31") || strings.Contains(payloads, pin)
			if shown == redacted {
				t.Errorf("PIN in the trace: %v, want %v\n%s", shown, !redacted, payloads)
			}
			if redacted && !strings.Contains(payloads, "0020000108ffffffffffffffff") {
				t.Errorf("redacted VERIFY not in the payloads:\n%s", payloads)
			}
			logs := r.log.String()
			if redacted == strings.Contains(logs, "WITHOUT redaction") {
				t.Errorf("warning about tracing without redaction: %v, want %v", !redacted, !redacted)
			}
			if !strings.Contains(logs, "msg=apdu") || strings.Contains(logs, "cmd=0020000108"+pin) == redacted ||
				!strings.Contains(logs, `msg="card reset"`) {
				t.Errorf("APDU log lines:\n%s", logs)
			}
			files, err := filepath.Glob(filepath.Join(perCard, "*.pcap"))
			if err != nil || len(files) != 1 || filepath.Base(files[0]) != "eid-"+sim.DefaultEID+".pcap" {
				t.Errorf("per-card files %v %v", files, err)
			}
		})
	}
}

// Tracing settings come from flags or the file; mistakes are reported
// with their line.
func TestTraceConfig(t *testing.T) {
	s, err := resolveWith(t, "", nil)
	if err != nil || s.trace.enabled() {
		t.Fatalf("tracing on by default: %v %+v", err, s.trace)
	}
	dir := t.TempDir()
	path := writeConfig(t, `
[trace]
pcap = "`+filepath.Join(dir, "t.pcap")+`"
log = true
cards = ["8949440000001155314", "7"]
max_size = "10M"
keep = 2
`)
	s, err = resolveWith(t, path, nil)
	if err != nil || !s.trace.enabled() || !s.trace.log || s.trace.maxSize != 10<<20 || s.trace.keep != 2 || len(s.trace.cards) != 2 || s.trace.noRedact {
		t.Fatalf("%v %+v", err, s.trace)
	}
	s, err = resolveWith(t, path, map[string]string{"WSRC_SERVER_TRACE_CARD": "1,2,3"}, "--trace-max-size", "1048576", "--trace-no-redact")
	if err != nil || len(s.trace.cards) != 3 || s.trace.maxSize != 1<<20 || !s.trace.noRedact {
		t.Fatalf("flags over file: %v %+v", err, s.trace)
	}
	if s, err := resolveWith(t, writeConfig(t, "[trace]\nmax_size = 200000\n"), nil); err != nil || s.trace.maxSize != 200000 {
		t.Fatalf("integer size: %v %+v", err, s.trace)
	}
	for text, want := range map[string]string{
		"[trace]\nmax_size = \"lots\"\n":    `:2: trace.max_size: "lots" is not a size`,
		"[trace]\nmax_size = 1000\n":        ":2: trace.max_size: 1000 bytes is too small",
		"[trace]\nmax_size = true\n":        ":2: trace.max_size: true is not a size",
		"[trace]\nkeep = -1\n":              ":2: trace.keep: -1 is out of range",
		"[trace]\ncards = [\"1\", \" \"]\n": ":2: trace.cards[1]: an empty entry",
		"[trace]\npcap = \"" + dir + "\"\n": ":2: trace.pcap: " + dir + " is a directory",
		"[trace]\nlog = \"yes\"\n":          ":2: trace.log: incompatible types",
		"[trace]\nfile = \"/tmp/x.pcap\"\n": ":2: trace.file: unknown setting",
		"[trace]\ndir = \"" + path + "\"\n": ":2: trace.dir: " + path + " is not a directory",
	} {
		if _, err := resolveWith(t, writeConfig(t, text), nil); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", text, err, want)
		}
	}
	if _, err := resolveWith(t, "", nil, "--trace-max-size", "12Q"); err == nil || !strings.Contains(err.Error(), `"12Q" is not a size`) {
		t.Errorf("bad flag: %v", err)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "100": 100, "64k": 64 << 10, "64KiB": 64 << 10, "100M": 100 << 20, "2GB": 2 << 30, " 5 m ": 5 << 20} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "M", "-1", "1.5M", "1T", "99999999999G", "0x10"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) accepted", bad)
		}
	}
}

// The adapter passes exchanges, failed ones (as SW 0000) and resets on,
// by the decimal card ID.
func TestAPDUTracer(t *testing.T) {
	var logs syncBuffer
	tr, err := trace.New(trace.Options{Log: slog.New(slog.NewTextHandler(&logs, nil)), ErrorLog: slog.New(slog.DiscardHandler),
		Select: trace.SelectCards([]string{"7"})})
	if err != nil {
		t.Fatal(err)
	}
	a := &apduTracer{tr: tr}
	const iccid = "8949440000001155314"
	cmd, _ := hex.DecodeString("0020000108" + pin + "ffffffff")
	a.TraceAPDU(server.APDUTrace{CardID: 7, ICCID: iccid, Command: cmd, Err: "card disconnected: gone"})
	a.TraceAPDU(server.APDUTrace{CardID: 7, ICCID: iccid, Reset: true, Response: []byte{0x3b, 0x01}})
	a.TraceAPDU(server.APDUTrace{CardID: 7, ICCID: iccid, Reset: true, Err: "no answer"}) // not a reset that happened
	a.TraceAPDU(server.APDUTrace{CardID: 8, ICCID: iccid, Command: []byte{0, 0xb0, 0, 0, 1}, Response: []byte{1}, SW: 0x9000})
	a.CardChanged(server.CardEvent{ID: 7})
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	got := logs.String()
	if strings.Count(got, "msg=apdu") != 1 || !strings.Contains(got, "card=7") || !strings.Contains(got, "sw=0000") ||
		!strings.Contains(got, "cmd=0020000108ffffffffffffffff") || strings.Count(got, `msg="card reset"`) != 1 ||
		strings.Contains(got, "card=8") {
		t.Errorf("trace log:\n%s", got)
	}
}

// FuzzParseSize: no panic, never negative, and a number written back
// parses to itself.
func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"0", "100", "64k", "64KiB", "100M", "2GB", " 5 m ", "", "M", "-1", "1.5M", "99999999999G"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := parseSize(s)
		if err != nil {
			return
		}
		if n < 0 {
			t.Fatalf("parseSize(%q) = %d", s, n)
		}
		if m, err := parseSize(strconv.FormatInt(n, 10)); err != nil || m != n {
			t.Fatalf("%d does not parse back: %d, %v", n, m, err)
		}
	})
}
