package gadget

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wsrc-go/wsrc/internal/testenv/qemuvm/vmscript"
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
	round               int
}

func (b benchRun) id() string {
	return fmt.Sprintf("bench-%s-%s-%d-%s-%x-r%d", b.profile, b.host, b.slots, b.apdu, b.ta1, b.round)
}

// key names what a pass measures, without host and round.
func (b benchRun) key() string {
	return fmt.Sprintf("%s/%d/%s/%x", b.profile, b.slots, b.apdu, b.ta1)
}

// benchRounds is how often the benchmark repeats every measurement; the
// hosts take turns in going first (libccid, wsrc | wsrc, libccid | ...),
// and the summary takes the median of the rounds: the machine is shared.
const benchRounds = 3

// benchRuns are the timing passes of this run. The concurrency check
// gives the OCTSIM's cards TA1 11 (6720 bit/s at its 2.5 MHz: a 256-byte
// read takes the card about 0.47 s), so that card time, not the emulated
// guest CPU, decides how many commands overlap. WSRC_GADGET_PROFILES
// leaves out the benchmark's passes on other profiles.
func benchRuns() []benchRun {
	if os.Getenv(benchEnv) != "1" {
		var out []benchRun
		for _, h := range hosts {
			for _, slots := range []int{1, 8} {
				out = append(out, benchRun{"sysmoOCTSIM", h, "read-256", slots, 2, 0x11, 1})
			}
		}
		return out
	}
	var what []benchRun // without host and round
	for _, slots := range []int{1, 8} {
		what = append(what, benchRun{profile: "sysmoOCTSIM", apdu: "read-256", slots: slots, n: 6, ta1: 0x11})
	}
	for _, p := range lab.Profiles {
		what = append(what, benchRun{profile: p.Name, apdu: "read-256", slots: 1, n: 40})
	}
	what = append(what,
		benchRun{profile: "sysmoOCTSIM", apdu: "read-256", slots: 8, n: 40},
		benchRun{profile: "sysmoOCTSIM", apdu: "select", slots: 1, n: 150},
		benchRun{profile: "sysmoOCTSIM", apdu: "select", slots: 8, n: 150},
		benchRun{profile: "ACR39U", apdu: "read-256", slots: 1, n: 20, ta1: 0x11})
	what = slices.DeleteFunc(what, func(b benchRun) bool {
		return !slices.ContainsFunc(profiles(), func(p lab.Profile) bool { return p.Name == b.profile })
	})
	var out []benchRun
	for r := 1; r <= benchRounds; r++ {
		for _, w := range what {
			order := []string{"libccid", "wsrc"}
			if r%2 == 0 {
				order = []string{"wsrc", "libccid"}
			}
			for _, h := range order {
				b := w
				b.host, b.round = h, r
				out = append(out, b)
			}
		}
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
				if b.profile != "sysmoOCTSIM" || b.host != h || b.apdu != "read-256" || b.ta1 != 0x11 || b.round != 1 {
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

// benchTable renders the timing passes as Markdown for
// docs/performance.md: per measurement, each host's median over the
// rounds of the pass's p50 per APDU and of its APDU rate, and the ratio
// of our driver's p50 to libccid's (below 1: we are faster).
func benchTable(t *testing.T, runs map[string]*run) string {
	type agg struct {
		p50, rate map[string][]float64 // by host
		first     benchRun
		maxBusy   map[string]int
	}
	var keys []string
	aggs := map[string]*agg{}
	for _, br := range benchRuns() {
		r := runs[br.id()]
		res, err := parseBench(br, r.oracle, r.gadget)
		if err != nil {
			t.Errorf("%s: %v", br.id(), err)
			continue
		}
		a := aggs[br.key()]
		if a == nil {
			a = &agg{p50: map[string][]float64{}, rate: map[string][]float64{}, first: br, maxBusy: map[string]int{}}
			aggs[br.key()] = a
			keys = append(keys, br.key())
		}
		a.p50[br.host] = append(a.p50[br.host], float64(res.p50)/float64(time.Millisecond))
		a.rate[br.host] = append(a.rate[br.host], res.rate())
		a.maxBusy[br.host] = max(a.maxBusy[br.host], res.maxBusy)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Median of %d rounds; p50 is the median time of one APDU, rate counts all cards' APDUs over the wall time.\n\n", benchRounds)
	b.WriteString("| profile | cards at once | APDU | card TA1 | libccid p50 | wsrc p50 | wsrc/libccid | libccid APDU/s | wsrc APDU/s | max busy (libccid/wsrc) |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, k := range keys {
		a := aggs[k]
		ta1 := "96"
		if a.first.ta1 != 0 {
			ta1 = fmt.Sprintf("%02X", a.first.ta1)
		}
		lp, wp := median(a.p50["libccid"]), median(a.p50["wsrc"])
		fmt.Fprintf(&b, "| %s | %d | %s | %s | %.1f ms | %.1f ms | %.2f | %.1f | %.1f | %d/%d |\n", a.first.profile, a.first.slots, a.first.apdu, ta1,
			lp, wp, wp/lp, median(a.rate["libccid"]), median(a.rate["wsrc"]), a.maxBusy["libccid"], a.maxBusy["wsrc"])
	}
	return b.String()
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
