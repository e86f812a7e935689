package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/wsrc-go/wsrc/agent"
	"github.com/wsrc-go/wsrc/internal/sdnotify"
)

// The agent's side of its Type=notify unit (systemd/wsrc-agent.service):
//
//   - READY=1 once the server has accepted the first card session
//     (hello_ack), or after startupGrace, whichever comes first. Waiting
//     for the server alone would let systemd kill (TimeoutStartSec=) and
//     restart, for ever, a Pi whose server is down or that has no card
//     in: the agent is doing its job then (retrying), so it says it is
//     up. Readiness is "the agent runs", not "the server is reachable";
//     STATUS= tells the rest.
//   - STATUS= "2 cards, 2 connected" when that changes, at most every
//     statusEvery.
//   - The watchdog (WATCHDOG=1 every half WatchdogSec=, sdnotify.Watchdog)
//     runs only while the Manager's event loop answers Manager.Ping each
//     interval: when the loop is wedged the pings stop, and systemd
//     restarts the agent.
//   - On SIGTERM (ctx done): STOPPING=1; the Manager closes every session
//     with 1001, and the program exits 0.
//
// Outside systemd every sdnotify call is a no-op.

// The sdnotify calls, variables so that tests can record them.
var (
	sdReady    = sdnotify.Ready
	sdStatus   = func(line string) error { return sdnotify.Status("%s", line) }
	sdStopping = sdnotify.Stopping
	sdInterval = sdnotify.Interval
	sdWatchdog = sdnotify.Watchdog
)

// startupGrace bounds the wait for the first session before READY=1;
// statusEvery is the shortest time between two STATUS= lines.
const (
	startupGrace = 10 * time.Second
	statusEvery  = 5 * time.Second
)

// manager is what runWithSystemd needs of *agent.Manager.
type manager interface {
	Run(ctx context.Context) error
	State() (agent.State, <-chan struct{})
	Ping(ctx context.Context) error
}

// runWithSystemd runs m until ctx is done (SIGINT, SIGTERM) or m stops,
// with the notifications described above. Its helper goroutines end
// before it returns.
func runWithSystemd(ctx context.Context, m manager, log *slog.Logger) error {
	hctx, stop := context.WithCancel(ctx) // the helpers' lifetime: until Run returns
	var wg sync.WaitGroup
	wg.Go(func() { announceReady(hctx, m, log) })
	wg.Go(func() { reportStatus(hctx, m, log) })
	wg.Go(func() { superviseWatchdog(hctx, m, log) })
	wg.Go(func() {
		<-hctx.Done()
		if ctx.Err() != nil { // a signal, not Run giving up
			notifyErr(log, "STOPPING=1", sdStopping())
			notifyErr(log, "STATUS=", sdStatus("stopping: closing card sessions"))
		}
	})
	err := m.Run(ctx)
	stop()
	wg.Wait()
	return err
}

func notifyErr(log *slog.Logger, what string, err error) {
	if err != nil {
		log.Warn("systemd notification failed", "what", what, "err", err)
	}
}

// announceReady sends READY=1 when the first session is up or after
// startupGrace.
func announceReady(ctx context.Context, m manager, log *slog.Logger) {
	grace := time.NewTimer(startupGrace)
	defer grace.Stop()
	why := "the server accepted a card session"
	for {
		st, changed := m.State()
		if st.EverConnected {
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
			continue
		case <-grace.C:
			why = fmt.Sprintf("no card session yet after %v; running (and retrying) anyway", startupGrace)
		}
		break
	}
	notifyErr(log, "READY=1", sdReady())
	log.Debug("ready", "why", why)
}

// reportStatus sends a STATUS= line on every change of the state, at
// most every statusEvery (the last state always gets through).
func reportStatus(ctx context.Context, m manager, log *slog.Logger) {
	last := ""
	for {
		st, changed := m.State()
		if line := statusLine(st); line != last {
			notifyErr(log, "STATUS=", sdStatus(line))
			last = line
			t := time.NewTimer(statusEvery)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			continue // look again: it may have changed meanwhile
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

// statusLine is the STATUS= text for st.
func statusLine(st agent.State) string {
	if st.Cards == 0 {
		return fmt.Sprintf("no cards, %d connected", st.Connected)
	}
	noun := "cards"
	if st.Cards == 1 {
		noun = "card"
	}
	return fmt.Sprintf("%d %s, %d connected", st.Cards, noun, st.Connected)
}

// superviseWatchdog runs sdWatchdog while the Manager's loop answers a
// Ping every interval (within the interval). It returns at once when the
// unit has no watchdog.
func superviseWatchdog(ctx context.Context, m manager, log *slog.Logger) {
	every, err := sdInterval()
	if err != nil {
		log.Warn("systemd watchdog setting unreadable; no watchdog pings", "err", err)
		return
	}
	if every <= 0 {
		return
	}
	wctx, stopPings := context.WithCancel(ctx)
	defer stopPings()
	var wg sync.WaitGroup
	defer wg.Wait() // after stopPings
	wg.Go(func() {
		if err := sdWatchdog(wctx); err != nil {
			log.Warn("systemd watchdog", "err", err)
		}
	})
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		pctx, cancel := context.WithTimeout(ctx, every)
		err := m.Ping(pctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			log.Error("the card manager does not answer; stopping the systemd watchdog pings so that systemd restarts the agent", "err", err)
			stopPings()
			<-ctx.Done()
			return
		}
	}
}
