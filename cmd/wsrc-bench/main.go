// Command wsrc-bench measures the WSRC relay on loopback: closed-loop
// throughput and latency, open-loop latency under a steady load, and the
// server's memory per idle card connection. The server runs in a child
// process (this binary, re-executed) so its CPU time, allocations and memory
// are measured apart from the load generator's. See docs/performance.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"time"

	"github.com/wsrc-go/wsrc/server/relaybench"
)

const childArg = "__serve-child"

func main() {
	if len(os.Args) == 2 && os.Args[1] == childArg {
		if err := relaybench.ServeChild(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "server child:", err)
			os.Exit(1)
		}
		return
	}
	os.Exit(run())
}

func run() int {
	fs := flag.NewFlagSet("wsrc-bench", flag.ExitOnError)
	scenarios := fs.String("scenarios", "closed1,closed100,floor1,floor100,open1000,idle10000",
		"comma-separated scenarios: closedN (N sessions, closed loop), floorN (the same over a raw TCP relay: the kernel's share),\nopenN (N sessions × -rate APDU/s), idleN (N idle cards)")
	dur := fs.Duration("duration", 10*time.Second, "measured time of each load scenario (plus a fifth for warm-up)")
	rate := fs.Float64("rate", 20, "APDUs per second per session in open-loop scenarios")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: wsrc-bench [flags]\n\nMeasures the relay user → server → agent (simulated card) → back on loopback.\nThe server runs in a child process; figures for CPU, allocations and memory are the server's.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	fs.Parse(os.Args[1:])

	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "wsrc-bench:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	r := &relaybench.Runner{Self: self, ChildArgs: []string{childArg}, Log: os.Stderr}

	fmt.Printf("wsrc-bench %s, %s, %d CPUs (%s), %s\n\n", time.Now().UTC().Format("2006-01-02 15:04 MST"),
		runtime.Version(), runtime.NumCPU(), cpuModel(), runtime.GOARCH)
	fmt.Println("| scenario | APDUs | APDU/s | p50 | p99 | max | server CPU/APDU | server allocs/APDU |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|")
	var idle, open []relaybench.Result
	for _, s := range strings.Split(*scenarios, ",") {
		var n int
		var res relaybench.Result
		switch {
		case sscan(s, "closed%d", &n):
			res, err = r.ClosedLoop(ctx, n, *dur)
		case sscan(s, "floor%d", &n):
			res, err = r.Floor(ctx, n, *dur)
		case sscan(s, "open%d", &n):
			res, err = r.OpenLoop(ctx, n, *rate, *dur)
		case sscan(s, "idle%d", &n):
			res, err = r.Idle(ctx, n)
			if err == nil {
				idle = append(idle, res)
			}
			continue
		default:
			fmt.Fprintf(os.Stderr, "wsrc-bench: unknown scenario %q\n", s)
			return 2
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "wsrc-bench: %s: %v\n", s, err)
			return 1
		}
		if res.SchedP99 > 0 {
			open = append(open, res)
		}
		fmt.Printf("| %s | %d | %.0f | %v | %v | %v | %v | %.1f |\n", res.Name, res.APDUs, res.Throughput(),
			round(res.P50), round(res.P99), round(res.Max), round(res.CPUPerAPDU()), res.AllocsPerAPDU())
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "wsrc-bench:", err)
		return 1
	}
	for _, res := range open {
		fmt.Printf("\n%s: from the scheduled send time (adds the load generator's lateness): p50 %v, p99 %v\n",
			res.Name, round(res.SchedP50), round(res.SchedP99))
	}
	for _, res := range idle {
		fmt.Printf("\n%s: server RSS %.1f KiB per connection, Go heap+stacks %.1f KiB per connection\n",
			res.Name, res.RSSPerConn/1024, res.GoMemPerConn/1024)
	}
	return 0
}

func sscan(s, format string, n *int) bool {
	_, err := fmt.Sscanf(s, format, n)
	return err == nil && *n > 0
}

func round(d time.Duration) time.Duration {
	switch {
	case d > time.Millisecond:
		return d.Round(10 * time.Microsecond)
	case d > time.Microsecond:
		return d.Round(100 * time.Nanosecond)
	}
	return d
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}
