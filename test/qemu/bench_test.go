package qemu

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wsrc-go/wsrc/card/sim"
	"github.com/wsrc-go/wsrc/internal/testenv/qemuvm/vmscript"
	"github.com/wsrc-go/wsrc/internal/testenv/vmtest"
)

// benchEnv set to 1 makes TestQEMUBenchCCIDvsPCSC a benchmark: many APDUs
// and several rounds instead of the quick correctness run of `make test`.
// benchNEnv overrides the APDUs per kind, benchRoundsEnv the rounds.
const (
	benchEnv       = "WSRC_VM_BENCH"
	benchNEnv      = "WSRC_VM_BENCH_N"
	benchRoundsEnv = "WSRC_VM_BENCH_ROUNDS"
)

// benchStacks are apdubench's stacks: the usbfs floor, the direct driver,
// pcscd + libccid.
var benchStacks = []string{"usbfs", "ccid", "pcsc"}

// TestQEMUBenchCCIDvsPCSC compares, in one VM and on the same emulated
// reader and card, the per-APDU time of the direct driver (package ccid
// over libusb) with pcscd + libccid (package pcsc over libpcsclite).
//
// A third stack gives the floor both build on: raw usbfs ioctls, one
// synchronous bulk-out and bulk-in per APDU (QEMU, VSCard and card/sim
// included); what a stack adds above it is its own cost.
//
// One reader, used by one stack at a time: the guest runs the usbfs floor
// and the direct driver, each releasing the reader when it exits, then
// starts pcscd, runs the PC/SC client, and stops pcscd again, which
// releases the reader for the next round. Even rounds run the stacks in
// the reverse order (usbfs, ccid, pcsc | pcsc, ccid, usbfs | ...) so that
// none is always first.
// Two readers, one per stack, would not work: pcscd claims every CCID
// reader it finds, and both emulated readers have the same VID:PID, so
// libccid's configuration cannot leave one to the direct driver.
//
// By default it is a correctness run for `make test` (30 APDUs of each
// kind, one round, a few seconds): both stacks must answer every APDU
// correctly; the figures are only logged. With WSRC_VM_BENCH=1 it runs
// 1000 APDUs of each kind in 6 rounds (about 2 minutes) and logs Markdown
// tables for docs/performance.md. Timing is never asserted: under TCG the
// figures follow the host's load.
func TestQEMUBenchCCIDvsPCSC(t *testing.T) {
	p := vmtest.Need(t)
	t.Parallel()
	vmtest.NeedPCSCD(t)
	n, warm, rounds := 30, 5, 1
	if os.Getenv(benchEnv) == "1" {
		n, warm, rounds = 1000, 50, 6
	}
	n = envInt(t, benchNEnv, n)
	rounds = envInt(t, benchRoundsEnv, rounds)

	initrd := buildImage(t, p, image{
		name:     "bench",
		binaries: map[string]string{"apdubench": vmtest.GoBuild(t, "github.com/wsrc-go/wsrc/test/qemu/guest/apdubench", true)},
		extra:    vmtest.AddPCSCD,
	})
	var s vmscript.Builder
	s.Modules(usbModules...).WaitUSB(1, 0x0b, 60*time.Second)
	bench := func(stack string, round int) {
		s.Run(fmt.Sprintf("%s-%d", stack, round), "apdubench", "-stack", stack,
			"-n", fmt.Sprint(n), "-warmup", fmt.Sprint(warm), "-timeout", "10m")
	}
	pcscRound := func(round int) {
		s.Start(fmt.Sprintf("pcscd-%d", round), vmtest.PCSCD, "--foreground")
		bench("pcsc", round)
		s.Stop(fmt.Sprintf("pcscd-%d", round))
	}
	for r := 1; r <= rounds; r++ {
		order := slices.Clone(benchStacks)
		if r%2 == 0 {
			slices.Reverse(order)
		}
		for _, stack := range order {
			if stack == "pcsc" {
				pcscRound(r)
			} else {
				bench(stack, r)
			}
		}
	}
	// tsc=reliable: under TCG on a loaded host the clocksource watchdog
	// may declare the TSC (the host's own) unstable and switch to the
	// HPET, whose every read is an emulated MMIO access; that would make
	// the timestamps themselves cost differently from run to run.
	tv := bootWith(t, p, initrd, s.String(), []string{"tsc=reliable"}, sim.New(cardB))

	var all []benchResult
	clock := ""
	for r := 1; r <= rounds; r++ {
		for _, stack := range benchStacks {
			name := fmt.Sprintf("%s-%d", stack, r)
			out := tv.exit(t, name)
			clock = value(out, "clocksource ")
			res, err := parseBench(out)
			if err != nil {
				t.Fatalf("%s: %v\n%s", name, err, strings.Join(out, "\n"))
			}
			if len(res) != 3 {
				t.Fatalf("%s: %d results, want 3:\n%s", name, len(res), strings.Join(out, "\n"))
			}
			for i := range res {
				res[i].round = r
			}
			all = append(all, res...)
		}
	}
	tv.done(t)
	load, _ := os.ReadFile("/proc/loadavg")
	t.Logf("per-APDU time in the guest (TCG, guest clock source %s), n=%d per APDU kind and round, host load average %s\n%s",
		clock, n, strings.Join(strings.Fields(string(load))[:min(3, len(strings.Fields(string(load))))], " "), benchTable(all))
}

// envInt reads a positive integer from the environment, def when unset.
func envInt(t *testing.T, key string, def int) int {
	t.Helper()
	v := os.Getenv(key)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive integer", key, v)
	}
	return n
}

// benchResult is one "result" line of apdubench.
type benchResult struct {
	stack, apdu              string
	round, n                 int
	mean, p50, p99, min, max time.Duration
	// cpu is the stack's guest process CPU per APDU, pcscd pcscd's.
	cpu, pcscd time.Duration
}

// parseBench reads apdubench's result lines,
// "result STACK APDU N MEAN P50 P99 MIN MAX", and the CPU lines that
// follow them, "cpu STACK APDU OWN PCSCD" (all in nanoseconds).
func parseBench(out []string) ([]benchResult, error) {
	var res []benchResult
	for _, l := range out {
		f := strings.Fields(l)
		if len(f) == 0 || (f[0] != "result" && f[0] != "cpu") {
			continue
		}
		want := map[string]int{"result": 9, "cpu": 5}[f[0]]
		if len(f) != want {
			return nil, fmt.Errorf("bad %s line %q", f[0], l)
		}
		nums := make([]time.Duration, len(f)-3)
		for i := range nums {
			v, err := strconv.ParseInt(f[3+i], 10, 64)
			if err != nil || v < 0 {
				return nil, fmt.Errorf("bad number %q in %q", f[3+i], l)
			}
			nums[i] = time.Duration(v)
		}
		if f[0] == "cpu" {
			i := slices.IndexFunc(res, func(r benchResult) bool { return r.stack == f[1] && r.apdu == f[2] })
			if i < 0 {
				return nil, fmt.Errorf("cpu line without a result: %q", l)
			}
			res[i].cpu, res[i].pcscd = nums[0], nums[1]
			continue
		}
		res = append(res, benchResult{stack: f[1], apdu: f[2], n: int(nums[0]),
			mean: nums[1], p50: nums[2], p99: nums[3], min: nums[4], max: nums[5]})
	}
	return res, nil
}

// benchTable renders the results as Markdown: a summary (per APDU kind
// and stack, the median over the rounds of each round's p50, mean, p99
// and guest CPU, with the rounds' range of means; then the direct
// driver's ratio to pcscd and each stack's p50 above the usbfs floor),
// and one row of mean / p50 per round.
func benchTable(rs []benchResult) string {
	var apdus, stacks []string
	rounds := 0
	for _, r := range rs {
		if !slices.Contains(apdus, r.apdu) {
			apdus = append(apdus, r.apdu)
		}
		if !slices.Contains(stacks, r.stack) {
			stacks = append(stacks, r.stack)
		}
		rounds = max(rounds, r.round)
	}
	find := func(apdu, stack string, round int) (benchResult, bool) {
		for _, r := range rs {
			if r.apdu == apdu && r.stack == stack && r.round == round {
				return r, true
			}
		}
		return benchResult{}, false
	}
	// over collects f over the rounds that have both stacks' results.
	over := func(apdu string, stacks []string, f func(x []benchResult) float64) []float64 {
		var v []float64
		for r := 1; r <= rounds; r++ {
			var xs []benchResult
			for _, s := range stacks {
				if x, ok := find(apdu, s, r); ok {
					xs = append(xs, x)
				}
			}
			if len(xs) == len(stacks) {
				v = append(v, f(xs))
			}
		}
		return v
	}
	us := func(d float64) string { return fmt.Sprintf("%.0f", d/float64(time.Microsecond)) }
	var b strings.Builder
	b.WriteString("| APDU | stack | p50 (µs) | mean (µs), range over rounds | p99 (µs) | guest CPU per APDU (µs) |\n|---|---|---:|---:|---:|---:|\n")
	for _, a := range apdus {
		for _, s := range stacks {
			one := []string{s}
			get := func(f func(x benchResult) time.Duration) []float64 {
				return over(a, one, func(x []benchResult) float64 { return float64(f(x[0])) })
			}
			means := get(func(x benchResult) time.Duration { return x.mean })
			cpu := us(median(get(func(x benchResult) time.Duration { return x.cpu })))
			if s == "pcsc" {
				cpu += " + " + us(median(get(func(x benchResult) time.Duration { return x.pcscd }))) + " (pcscd)"
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s (%s–%s) | %s | %s |\n", a, stackName(s),
				us(median(get(func(x benchResult) time.Duration { return x.p50 }))),
				us(median(means)), us(minOf(means)), us(maxOf(means)),
				us(median(get(func(x benchResult) time.Duration { return x.p99 }))), cpu)
		}
		if slices.Contains(stacks, "ccid") && slices.Contains(stacks, "pcsc") {
			ratio := func(f func(x benchResult) time.Duration) string {
				v := over(a, []string{"ccid", "pcsc"}, func(x []benchResult) float64 {
					return float64(f(x[0])) / max(1, float64(f(x[1])))
				})
				return fmt.Sprintf("%.2f (%.2f–%.2f)", median(v), minOf(v), maxOf(v))
			}
			fmt.Fprintf(&b, "| %s | **direct ÷ pcscd** | %s | %s | %s | |\n", a,
				ratio(func(x benchResult) time.Duration { return x.p50 }),
				ratio(func(x benchResult) time.Duration { return x.mean }),
				ratio(func(x benchResult) time.Duration { return x.p99 }))
		}
		if slices.Contains(stacks, "usbfs") {
			var cells []string
			for _, s := range stacks {
				if s == "usbfs" {
					continue
				}
				v := over(a, []string{s, "usbfs"}, func(x []benchResult) float64 { return float64(x[0].p50 - x[1].p50) })
				cells = append(cells, stackNames([]string{s})[0]+" "+us(median(v)))
			}
			fmt.Fprintf(&b, "| %s | p50 above the usbfs floor | %s | | | |\n", a, strings.Join(cells, ", "))
		}
	}
	b.WriteString("\nPer round, mean / p50 (µs):\n\n| APDU | stack |")
	for r := 1; r <= rounds; r++ {
		fmt.Fprintf(&b, " round %d |", r)
	}
	b.WriteString("\n|---|---|")
	for range rounds {
		b.WriteString("---:|")
	}
	b.WriteString("\n")
	for _, a := range apdus {
		for _, s := range stacks {
			fmt.Fprintf(&b, "| %s | %s |", a, stackName(s))
			for r := 1; r <= rounds; r++ {
				if x, ok := find(a, s, r); ok {
					fmt.Fprintf(&b, " %s / %s |", us(float64(x.mean)), us(float64(x.p50)))
				} else {
					b.WriteString(" – |")
				}
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}

// minOf and maxOf are slices.Min and Max, 0 for none.
func minOf(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	return slices.Min(v)
}

func maxOf(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	return slices.Max(v)
}

// median of v (the mean of the middle two for an even count); 0 for none.
func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Sorted(slices.Values(v))
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

func stackNames(stacks []string) []string {
	var out []string
	for _, s := range stacks {
		switch s {
		case "usbfs":
			out = append(out, "floor")
		case "ccid":
			out = append(out, "direct")
		case "pcsc":
			out = append(out, "pcscd")
		default:
			out = append(out, s)
		}
	}
	return out
}

func stackName(s string) string {
	switch s {
	case "ccid":
		return "direct (ccid, libusb)"
	case "pcsc":
		return "pcscd + libccid"
	case "usbfs":
		return "floor (raw usbfs)"
	}
	return s
}

func TestParseBench(t *testing.T) {
	good := []string{
		"card ccid \"QEMU USB CCID [1-1]\" atr 3B9F",
		"result ccid select-mf 30 3056101 2376197 12142183 586463 12142183",
		"cpu ccid select-mf 700000 0",
		"result pcsc read-256 2000 1000 900 5000 800 9000",
		"cpu pcsc read-256 400000 500000",
		"done ccid 209042437",
	}
	res, err := parseBench(good)
	if err != nil {
		t.Fatal(err)
	}
	want := []benchResult{
		{stack: "ccid", apdu: "select-mf", n: 30, mean: 3056101, p50: 2376197, p99: 12142183, min: 586463, max: 12142183, cpu: 700000},
		{stack: "pcsc", apdu: "read-256", n: 2000, mean: 1000, p50: 900, p99: 5000, min: 800, max: 9000, cpu: 400000, pcscd: 500000},
	}
	if !slices.Equal(res, want) {
		t.Errorf("parseBench = %+v, want %+v", res, want)
	}
	for _, bad := range []string{
		"result ccid select-mf 30 1 2 3 4",
		"result ccid select-mf 30 1 2 3 4 5 6",
		"result ccid select-mf 30 1 2 x 4 5",
		"result ccid select-mf 30 1 2 -3 4 5",
		"result ccid select-mf 30 1 2 99999999999999999999 4 5",
		"cpu ccid select-mf 1 2",
		"result ccid select-mf 30 1 2 3 4 5\ncpu ccid select-mf 1",
	} {
		if _, err := parseBench(strings.Split(bad, "\n")); err == nil {
			t.Errorf("parseBench(%q) accepted it", bad)
		}
	}
	table := benchTable([]benchResult{
		{stack: "usbfs", apdu: "select-mf", round: 1, mean: 300 * time.Microsecond, p50: 250 * time.Microsecond, p99: time.Millisecond, cpu: 100 * time.Microsecond},
		{stack: "ccid", apdu: "select-mf", round: 1, mean: 500 * time.Microsecond, p50: 400 * time.Microsecond, p99: time.Millisecond, cpu: 200 * time.Microsecond},
		{stack: "pcsc", apdu: "select-mf", round: 1, mean: time.Millisecond, p50: 800 * time.Microsecond, p99: 2 * time.Millisecond, cpu: 300 * time.Microsecond, pcscd: 400 * time.Microsecond},
	})
	for _, w := range []string{
		"| select-mf | floor (raw usbfs) | 250 | 300 (300–300) | 1000 | 100 |",
		"| select-mf | direct (ccid, libusb) | 400 | 500 (500–500) | 1000 | 200 |",
		"| select-mf | pcscd + libccid | 800 | 1000 (1000–1000) | 2000 | 300 + 400 (pcscd) |",
		"| select-mf | **direct ÷ pcscd** | 0.50 (0.50–0.50) | 0.50 (0.50–0.50) | 0.50 (0.50–0.50) | |",
		"| select-mf | p50 above the usbfs floor | direct 150, pcscd 550 | | | |",
		"| select-mf | direct (ccid, libusb) | 500 / 400 |",
	} {
		if !strings.Contains(table, w) {
			t.Errorf("table lacks %q:\n%s", w, table)
		}
	}
	if got := median([]float64{3, 1, 2}); got != 2 {
		t.Errorf("median(3, 1, 2) = %v", got)
	}
	if got := median([]float64{4, 1, 2, 3}); got != 2.5 {
		t.Errorf("median(4, 1, 2, 3) = %v", got)
	}
	if got := median(nil); got != 0 {
		t.Errorf("median() = %v", got)
	}
}

func FuzzParseBench(f *testing.F) {
	f.Add("result ccid select-mf 30 3056101 2376197 12142183 586463 12142183")
	f.Add("result pcsc read-256 2000 1000 900 5000 800 9000")
	f.Add("result ccid select-mf 30 1 2 x 4 5")
	f.Add("done ccid 1")
	f.Add("result ccid a 1 2 3 4 5 6\ncpu ccid a 7 8")
	f.Fuzz(func(t *testing.T, line string) {
		res, err := parseBench(strings.Split(line, "\n"))
		if err != nil {
			return
		}
		for _, r := range res {
			if r.n < 0 || r.mean < 0 || r.p50 < 0 || r.p99 < 0 || r.min < 0 || r.max < 0 || r.cpu < 0 || r.pcscd < 0 {
				t.Errorf("negative figure from %q: %+v", line, r)
			}
			benchTable(res) // must not panic
		}
	})
}
