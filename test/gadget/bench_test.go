package gadget

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wsrc-go/wsrc/internal/qemuvm/vmscript"
	"github.com/wsrc-go/wsrc/test/gadget/internal/lab"
)

// benchEnv set to 1 makes the lab's timing passes a benchmark: more
// APDUs, every profile through both hosts, and the default-versus-
// negotiated-rate pair; the figures go to docs/performance.md. Without
// it the lab runs only the 8-slot concurrency check with a few APDUs.
const benchEnv = "WSRC_GADGET_BENCH"

// benchRun is one labbench pass: a gadget and labbench through one host.
type benchRun struct {
	profile, host, apdu string
	slots, n            int
	ta1                 byte // the cards' TA1; 0: the profile card's own
}

func (b benchRun) id() string {
	return fmt.Sprintf("bench-%s-%s-%d-%s-%x", b.profile, b.host, b.slots, b.apdu, b.ta1)
}

// benchRuns are the timing passes of this run. The concurrency check
// gives the OCTSIM's cards TA1 11 (6720 bit/s at its 2.5 MHz: a 256-byte
// read takes the card about 0.47 s), so that card time, not the emulated
// guest CPU, decides how many commands overlap.
func benchRuns() []benchRun {
	var out []benchRun
	n := 2
	if os.Getenv(benchEnv) == "1" {
		n = 10
	}
	for _, h := range hosts {
		for _, slots := range []int{1, 8} {
			out = append(out, benchRun{"sysmoOCTSIM", h, "read-256", slots, n, 0x11})
		}
	}
	if os.Getenv(benchEnv) != "1" {
		return out
	}
	for _, p := range lab.Profiles {
		for _, h := range hosts {
			out = append(out, benchRun{p.Name, h, "read-256", 1, 50, 0})
		}
	}
	for _, h := range hosts {
		out = append(out, benchRun{"sysmoOCTSIM", h, "read-256", 8, 50, 0})
		out = append(out, benchRun{"sysmoOCTSIM", h, "select", 1, 200, 0})
		out = append(out, benchRun{"sysmoOCTSIM", h, "select", 8, 200, 0})
		out = append(out, benchRun{"ACR39U", h, "read-256", 1, 30, 0x11})
	}
	return out
}

// addBenchRuns appends the passes to the lab script.
func addBenchRuns(s *vmscript.Builder, runs []benchRun) {
	for _, b := range runs {
		id := b.id()
		serial := "lab-" + id
		args := []string{"ccidgadget", "-profile", b.profile, "-serial", serial}
		if b.ta1 != 0 {
			args = append(args, "-ta1", fmt.Sprint(b.ta1))
		}
		s.Start("gadget-"+id, args...)
		s.Run("labbench-"+id, "labbench", "-host", b.host, "-serial", serial, "-slots", fmt.Sprint(b.slots),
			"-n", fmt.Sprint(b.n), "-apdu", b.apdu)
		s.Stop("gadget-" + id)
	}
}

// benchResult is labbench's "bench" line and the gadget's "stats" line.
type benchResult struct {
	benchRun
	total          int
	wall, p50      time.Duration
	maxBusy        int
	out, gadgetOut []string
}

func parseBench(b benchRun, out, gadget []string) (benchResult, error) {
	r := benchResult{benchRun: b, out: out, gadgetOut: gadget}
	found := false
	for _, l := range out {
		f := strings.Fields(l)
		if len(f) == 7 && f[0] == "bench" {
			total, e1 := strconv.Atoi(f[4])
			wall, e2 := strconv.ParseInt(f[5], 10, 64)
			p50, e3 := strconv.ParseInt(f[6], 10, 64)
			if e1 != nil || e2 != nil || e3 != nil {
				return r, fmt.Errorf("bad line %q", l)
			}
			r.total, r.wall, r.p50, found = total, time.Duration(wall), time.Duration(p50), true
		}
	}
	for _, l := range gadget {
		fmt.Sscanf(l, "stats maxbusy=%d", &r.maxBusy)
	}
	if !found {
		return r, fmt.Errorf("no result; labbench said:\n%s\ngadget said:\n%s", strings.Join(out, "\n"), strings.Join(gadget, "\n"))
	}
	return r, nil
}

// rate is APDUs per second over the whole pass.
func (r benchResult) rate() float64 { return float64(r.total) / r.wall.Seconds() }

// TestGadgetConcurrency runs read-256 on 1 and on 8 cards of the
// sysmoOCTSIM at once through each host (with card timing: every APDU
// takes its bytes' time at the negotiated speed, here TA1 11). Every
// response must be right; with our driver the gadget must have seen 8
// commands outstanding at once (bMaxCCIDBusySlots 8). The rates are
// logged; with WSRC_GADGET_BENCH=1 this is the benchmark behind
// docs/performance.md.
func TestGadgetConcurrency(t *testing.T) {
	runs := labRuns(t)
	results := map[string]benchResult{}
	for _, h := range hosts {
		t.Run("sysmoOCTSIM/"+h, func(t *testing.T) {
			for _, b := range benchRuns() {
				if b.profile != "sysmoOCTSIM" || b.host != h || b.apdu != "read-256" || b.ta1 != 0x11 {
					continue
				}
				r := runs[b.id()]
				res, err := parseBench(b, r.oracle, r.gadget)
				if err != nil {
					t.Fatalf("%d slots: %v", b.slots, err)
				}
				results[fmt.Sprint(h, b.slots)] = res
				t.Logf("%d slots: %d APDUs in %v, %.1f APDU/s, p50 %v, at most %d slots busy at once",
					b.slots, res.total, res.wall.Round(time.Millisecond), res.rate(), res.p50.Round(time.Microsecond), res.maxBusy)
				if h == "wsrc" && b.slots == 8 && res.maxBusy < 8 {
					t.Errorf("8 cards busy, but the reader saw at most %d commands at once", res.maxBusy)
				}
			}
		})
	}
	if one, eight := results["wsrc1"], results["wsrc8"]; one.total > 0 && eight.total > 0 {
		t.Logf("our driver: 8 slots give %.1f× the APDU rate of one", eight.rate()/one.rate())
	}
	if one, eight := results["libccid1"], results["libccid8"]; one.total > 0 && eight.total > 0 {
		t.Logf("pcscd + libccid: 8 slots give %.1f× the APDU rate of one", eight.rate()/one.rate())
	}
	if os.Getenv(benchEnv) == "1" {
		t.Logf("benchmark (%s=1):\n%s", benchEnv, benchTable(t, runs))
	}
}

// benchTable renders every timing pass as Markdown for docs/performance.md.
func benchTable(t *testing.T, runs map[string]*run) string {
	var b strings.Builder
	b.WriteString("| profile | host | cards at once | APDU | card TA1 | APDUs | wall | APDU/s | p50 per APDU | max busy |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, br := range benchRuns() {
		r := runs[br.id()]
		res, err := parseBench(br, r.oracle, r.gadget)
		if err != nil {
			t.Errorf("%s: %v", br.id(), err)
			continue
		}
		ta1 := "96"
		if br.ta1 != 0 {
			ta1 = fmt.Sprintf("%02X", br.ta1)
		}
		fmt.Fprintf(&b, "| %s | %s | %d | %s | %s | %d | %v | %.1f | %v | %d |\n", br.profile, br.host, br.slots, br.apdu, ta1,
			res.total, res.wall.Round(time.Millisecond), res.rate(), res.p50.Round(10*time.Microsecond), res.maxBusy)
	}
	return b.String()
}
