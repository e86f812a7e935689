package trace

import (
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wsrc-go/wsrc/internal/trace/tracetest"
)

// tshark runs tshark on a file (see tracetest.Tshark).
func tshark(t *testing.T, args ...string) string {
	t.Helper()
	return tracetest.Tshark(t, args...)
}

const pinDigits = "39333631" // "9361"

func writeTshark(t *testing.T, unredacted bool) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "trace.pcap")
	tr, err := New(Options{File: path, Unredacted: unredacted, ErrorLog: slog.New(&logRecorder{})})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range []Event{
		ev(t, "c1", iccid1, "00a40004023f00", "", 0x9000),
		ev(t, "c1", iccid1, "00a40004022fe200", "", 0x9000), // case 4: Le dropped for the T=0 form
		ev(t, "c1", iccid1, "00b000000a", "98941400000011553541", 0x9000),
		ev(t, "c1", iccid1, "0020000108"+pinDigits+"ffffffff", "", 0x63c2),
	} {
		tr.APDU(e)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestTsharkDecodes checks that tshark decodes the packets as GSM SIM:
// instructions, file IDs, status words, and that the PIN is nowhere in
// its view of the file, not even in the hex dump.
func TestTsharkDecodes(t *testing.T) {
	path := writeTshark(t, false)
	fields := tshark(t, "-r", path, "-T", "fields", "-E", "separator=|",
		"-e", "frame.protocols", "-e", "ip.src", "-e", "gsm_sim.apdu.ins", "-e", "gsm_sim.file_id",
		"-e", "gsm_sim.apdu.sw", "-e", "gsm_sim.apdu.data")
	want := []string{
		"raw:ip:udp:gsmtap:gsm_sim|127.1.0.1|0xa4|0x3f00|0x9000|",
		"raw:ip:udp:gsmtap:gsm_sim|127.1.0.1|0xa4|0x2fe2|0x9000|",
		"raw:ip:udp:gsmtap:gsm_sim|127.1.0.1|0xb0||0x9000|98941400000011553541",
		"raw:ip:udp:gsmtap:gsm_sim|127.1.0.1|0x20||0x63c2|",
	}
	got := strings.Split(strings.TrimSpace(fields), "\n")
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("tshark fields:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	verbose := tshark(t, "-r", path, "-V", "-x")
	for _, s := range []string{"GSM SIM", "Instruction: SELECT (0xa4)", "File ID: MF (0x3f00)", "File ID: EF.ICCID (0x2fe2)",
		"Instruction: READ BINARY (0xb0)", "Instruction: VERIFY CHV (0x20)", "Status Word: 63c2"} {
		if !strings.Contains(verbose, s) {
			t.Errorf("tshark -V lacks %q", s)
		}
	}
	if strings.Contains(verbose, "39 33 36 31") || strings.Contains(verbose, "9361") {
		t.Error("tshark shows the PIN")
	}
	payloads := tshark(t, "-r", path, "-T", "fields", "-e", "udp.payload")
	if !strings.Contains(payloads, "0020000108ffffffffffffffff63c2") || strings.Contains(payloads, pinDigits) {
		t.Errorf("UDP payloads as tshark sees them:\n%s", payloads)
	}
}

// TestTsharkUnredacted is the control: with redaction off the PIN is in
// the hex dump, so the check above can fail.
func TestTsharkUnredacted(t *testing.T) {
	verbose := tshark(t, "-r", writeTshark(t, true), "-x")
	if !strings.Contains(verbose, "39 33 36 31") {
		t.Error("unredacted trace: tshark hex dump lacks the PIN")
	}
}
