// Package relaybench measures the relay: user → server → card agent
// (simulated UICC) → back, over loopback WebSockets, with the server in a
// child process so that its CPU time, allocations and memory are measured
// apart from the load generator's. cmd/wsrc-bench is its command line;
// docs/performance.md records its output.
//
// Scenarios:
//   - closed loop: N sessions each send the next APDU as soon as the
//     previous reply arrives; throughput, latency percentiles, server CPU
//     and allocations per APDU.
//   - open loop: N sessions each send R APDUs per second on a fixed
//     schedule; latency is measured from the actual send (the relay's
//     round trip) and also from the scheduled send time, so a stalled
//     relay cannot hide its delay (no coordinated omission).
//   - idle: N card connections identified and left idle; server memory per
//     connection.
package relaybench

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
)

// Result is one scenario's figures.
type Result struct {
	Name      string
	Sessions  int
	APDUs     int
	Elapsed   time.Duration
	P50, P99  time.Duration
	Max       time.Duration
	ServerCPU time.Duration // server CPU time over the measured window
	Mallocs   uint64        // server heap allocations over the window
	// Open loop only: latency from the scheduled send time (includes the
	// load generator's lateness), next to P50/P99 from the actual send.
	SchedP50, SchedP99 time.Duration
	// Idle scenario only: server memory growth per connection.
	RSSPerConn, GoMemPerConn float64
}

// Throughput is APDUs per second over the measured window.
func (r Result) Throughput() float64 { return float64(r.APDUs) / r.Elapsed.Seconds() }

// CPUPerAPDU is server CPU time per relayed APDU.
func (r Result) CPUPerAPDU() time.Duration {
	if r.APDUs == 0 {
		return 0
	}
	return r.ServerCPU / time.Duration(r.APDUs)
}

// AllocsPerAPDU is server heap allocations per relayed APDU.
func (r Result) AllocsPerAPDU() float64 {
	if r.APDUs == 0 {
		return 0
	}
	return float64(r.Mallocs) / float64(r.APDUs)
}

// Runner runs scenarios against a fresh server child each.
type Runner struct {
	// Self is the executable to re-run as the server child, with
	// ChildArgs making it call ServeChild.
	Self      string
	ChildArgs []string
	ChildEnv  []string  // added to the child's environment
	Log       io.Writer // progress messages
}

// pair is one simulated card and the user bound to it.
type pair struct {
	agent *fakeAgent
	user  *user
}

// setup starts a server child and connects n card/user pairs. The
// returned cleanup closes every connection and stops the child.
func (r *Runner) setup(ctx context.Context, n int, withUsers bool) (*serverProc, []pair, func(), error) {
	srv, err := startServer(r.Self, r.ChildEnv, r.ChildArgs...)
	if err != nil {
		return nil, nil, nil, err
	}
	pairs := make([]pair, n)
	var wg sync.WaitGroup // owns every agent's serve goroutine
	cleanup := func() {
		for _, p := range pairs {
			if p.user != nil {
				p.user.conn.Close()
			}
			if p.agent != nil {
				p.agent.conn.Close()
			}
		}
		wg.Wait()
		srv.stop()
	}
	// Connect in bounded parallel batches: 10 000 dials at once would only
	// measure the listen backlog.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(64)
	for i := range pairs {
		g.Go(func() error {
			a, err := dialAgent(gctx, srv.cardURL, benchICCID(i))
			if err != nil {
				return err
			}
			pairs[i].agent = a
			wg.Add(1)
			go func() { defer wg.Done(); a.serve() }()
			select {
			case <-a.ready:
			case <-gctx.Done():
				return gctx.Err()
			case <-time.After(30 * time.Second):
				return fmt.Errorf("card %d not ready after 30 s", i)
			}
			if withUsers {
				u, err := dialUser(gctx, srv.userURL, benchICCID(i))
				if err != nil {
					return err
				}
				pairs[i].user = u
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		cleanup()
		return nil, nil, nil, err
	}
	return srv, pairs, cleanup, nil
}

func (r *Runner) logf(format string, args ...any) {
	if r.Log != nil {
		fmt.Fprintf(r.Log, format+"\n", args...)
	}
}

// ClosedLoop runs n sessions back to back for d after a warm-up.
func (r *Runner) ClosedLoop(ctx context.Context, n int, d time.Duration) (Result, error) {
	r.logf("closed loop: %d sessions, %v", n, d)
	srv, pairs, cleanup, err := r.setup(ctx, n, true)
	if err != nil {
		return Result{}, err
	}
	defer cleanup()
	res, err := r.closedLoop(srv, n, d, func(i int, _ []byte) error {
		return pairs[i].user.roundTrip(benchAPDU, "r_apdu")
	})
	res.Name = fmt.Sprintf("closed loop, %d session(s)", n)
	return res, err
}

// closedLoop drives roundTrip(i, scratch) for sessions 0..n-1 back to back:
// a warm-up of d/5, then d measured, with the server's stats around it.
func (r *Runner) closedLoop(srv *serverProc, n int, d time.Duration, roundTrip func(i int, scratch []byte) error) (Result, error) {
	run := func(d time.Duration, record bool) ([][]time.Duration, error) {
		lat := make([][]time.Duration, n)
		g := new(errgroup.Group)
		deadline := time.Now().Add(d)
		for i := range n {
			g.Go(func() error {
				var l []time.Duration
				if record {
					l = make([]time.Duration, 0, 1<<16)
				}
				scratch := make([]byte, 64)
				for {
					t0 := time.Now()
					if !t0.Before(deadline) {
						break
					}
					if err := roundTrip(i, scratch); err != nil {
						return err
					}
					if record {
						l = append(l, time.Since(t0))
					}
				}
				lat[i] = l
				return nil
			})
		}
		return lat, g.Wait()
	}
	if _, err := run(d/5, false); err != nil { // warm-up
		return Result{}, fmt.Errorf("warm-up: %w", err)
	}
	before, err := srv.query("stats")
	if err != nil {
		return Result{}, err
	}
	t0 := time.Now()
	lat, err := run(d, true)
	elapsed := time.Since(t0)
	if err != nil {
		return Result{}, err
	}
	after, err := srv.query("stats")
	if err != nil {
		return Result{}, err
	}
	res := summarize("", n, lat, elapsed)
	res.ServerCPU = after.CPU - before.CPU
	res.Mallocs = after.Mallocs - before.Mallocs
	return res, nil
}

// OpenLoop runs n sessions that each send rate APDUs per second for d.
func (r *Runner) OpenLoop(ctx context.Context, n int, rate float64, d time.Duration) (Result, error) {
	r.logf("open loop: %d sessions × %.0f APDU/s, %v", n, rate, d)
	srv, pairs, cleanup, err := r.setup(ctx, n, true)
	if err != nil {
		return Result{}, err
	}
	defer cleanup()
	interval := time.Duration(float64(time.Second) / rate)
	before, err := srv.query("stats")
	if err != nil {
		return Result{}, err
	}
	// lat: from the actual send to the reply, the relay's round trip.
	// sched: from the scheduled send time to the reply; it adds the load
	// generator's own lateness (timers firing late on a busy machine).
	lat := make([][]time.Duration, n)
	sched := make([][]time.Duration, n)
	g := new(errgroup.Group)
	start := time.Now()
	end := start.Add(d)
	for i, p := range pairs {
		g.Go(func() error {
			l := make([]time.Duration, 0, int(rate*d.Seconds())+1)
			// Spread the sessions' phases evenly over one interval.
			next := start.Add(interval * time.Duration(i) / time.Duration(n))
			for next.Before(end) {
				if w := time.Until(next); w > 0 {
					time.Sleep(w) // pacing the load, not synchronising
				}
				sent := time.Now()
				if err := p.user.roundTrip(benchAPDU, "r_apdu"); err != nil {
					return err
				}
				done := time.Now()
				l = append(l, done.Sub(sent))
				s := done.Sub(next)
				sched[i] = append(sched[i], s)
				next = next.Add(interval)
			}
			lat[i] = l
			return nil
		})
	}
	err = g.Wait()
	elapsed := time.Since(start)
	if err != nil {
		return Result{}, err
	}
	after, err := srv.query("stats")
	if err != nil {
		return Result{}, err
	}
	res := summarize(fmt.Sprintf("open loop, %d sessions × %.0f APDU/s", n, rate), n, lat, elapsed)
	fromSchedule := summarize("", n, sched, elapsed)
	res.SchedP50, res.SchedP99 = fromSchedule.P50, fromSchedule.P99
	res.ServerCPU = after.CPU - before.CPU
	res.Mallocs = after.Mallocs - before.Mallocs
	return res, nil
}

// Idle connects n identified cards and reports the server's memory growth
// per connection.
func (r *Runner) Idle(ctx context.Context, n int) (Result, error) {
	r.logf("idle: %d card connections", n)
	srv, err := startServer(r.Self, r.ChildEnv, r.ChildArgs...)
	if err != nil {
		return Result{}, err
	}
	base, err := srv.query("gc")
	srv.stop()
	if err != nil {
		return Result{}, err
	}
	// A fresh child for the measurement, so the baseline above is clean.
	srv2, pairs, cleanup, err := r.setup(ctx, n, false)
	if err != nil {
		return Result{}, err
	}
	defer cleanup()
	_ = pairs
	loaded, err := srv2.query("gc")
	if err != nil {
		return Result{}, err
	}
	goMem := func(s ServerStats) float64 { return float64(s.HeapInuse + s.StackInuse) }
	return Result{
		Name:         fmt.Sprintf("idle, %d card connections", n),
		Sessions:     n,
		RSSPerConn:   (float64(loaded.RSS) - float64(base.RSS)) / float64(n),
		GoMemPerConn: (goMem(loaded) - goMem(base)) / float64(n),
	}, nil
}

func summarize(name string, n int, lat [][]time.Duration, elapsed time.Duration) Result {
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	slices.Sort(all)
	res := Result{Name: name, Sessions: n, APDUs: len(all), Elapsed: elapsed}
	if len(all) > 0 {
		res.P50 = all[len(all)/2]
		res.P99 = all[len(all)*99/100]
		res.Max = all[len(all)-1]
	}
	return res
}
