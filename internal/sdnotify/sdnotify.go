// Package sdnotify is the programs' whole contact with systemd: readiness
// and status notifications, the watchdog keep-alive, and the listening
// sockets of socket activation.
//
// It sits in server/daemon and cmd/wsrc-agent, between flag parsing and
// the one call into package server or agent: the binary asks Listeners for
// sockets systemd bound (else it binds its own), calls Ready once it
// serves, runs Watchdog (or WatchdogWhile, with a health check; or calls
// Ping from a loop of its own) for as long as it runs, and Stopping when it shuts
// down. The unit files in systemd/ (Type=notify, NotifyAccess=main,
// WatchdogSec=, FileDescriptorName=user / card) are the other half.
//
// It wraps github.com/coreos/go-systemd/v22. As that package documents,
// not running under systemd is not an error: with NOTIFY_SOCKET, WATCHDOG_USEC
// or LISTEN_FDS unset every function here is a no-op that returns nil, so
// the same binary runs by hand, in tests and in containers.
package sdnotify

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// notify sends one state string to the service manager. It reports false,
// nil when NOTIFY_SOCKET is unset. A variable so tests can count calls
// without a socket; production code never changes it.
var notify = func(state string) (bool, error) {
	// Keep NOTIFY_SOCKET set: Ready, Status, Watchdog and Stopping are
	// each called many times over the life of the process.
	return daemon.SdNotify(false, state)
}

// send is notify with the "not under systemd" case folded into nil.
func send(state string) error {
	if _, err := notify(state); err != nil {
		return fmt.Errorf("sd_notify %q: %w", firstLine(state), err)
	}
	return nil
}

// Ready tells systemd that start-up is finished: the listeners are bound
// (server) or the backends have been probed (agent). A Type=notify unit
// stays "activating" until it is called.
func Ready() error {
	return send(daemon.SdNotifyReady)
}

// Status sets the one-line status shown by `systemctl status`, formatted
// as with fmt.Sprintf. Line breaks are replaced by spaces, because each
// line of a notification is a separate assignment.
func Status(format string, args ...any) error {
	s := fmt.Sprintf(format, args...)
	s = strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ").Replace(s)
	return send("STATUS=" + s)
}

// Stopping tells systemd that an orderly shutdown has begun, so that the
// time spent draining connections is not taken for a hang.
func Stopping() error {
	return send(daemon.SdNotifyStopping)
}

// Ping sends one WATCHDOG=1 now: the keep-alive for a caller that runs
// its own loop, every Interval, and pings only while its own health check
// passes (an agent whose card manager still answers), so that a wedged
// process is restarted although its goroutines still run. Watchdog and
// WatchdogWhile are such loops, ready made. Not under systemd (NOTIFY_SOCKET unset) it does nothing; with
// the watchdog off systemd ignores the message.
func Ping() error {
	return send(daemon.SdNotifyWatchdog)
}

// Interval returns how often Watchdog (or a caller of Ping) pings: half of the unit's
// WatchdogSec=, as sd_watchdog_enabled(3) advises, or 0 when the watchdog
// is off or meant for another process (WATCHDOG_PID). A malformed
// WATCHDOG_USEC is an error.
func Interval() (time.Duration, error) {
	d, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		return 0, fmt.Errorf("reading the watchdog setting: %w", err)
	}
	return d / 2, nil
}

// Watchdog sends WATCHDOG=1 every Interval until ctx is done, then returns
// nil, whatever the state of the rest of the process (WatchdogWhile gates
// the pings on a health check). When the watchdog is off it returns nil
// at once, so callers can always start it: `go sdnotify.Watchdog(ctx)`
// (or in an errgroup).
//
// The goroutine that runs Watchdog is its only owner; it starts nothing.
// A failed ping is logged and the loop goes on: if pings stay lost,
// systemd's restart of the service is the right outcome anyway.
func Watchdog(ctx context.Context) error {
	return WatchdogWhile(ctx, nil)
}

// WatchdogWhile is Watchdog with the pings gated on healthy: at each
// Interval it calls healthy and pings only when it returns nil. A check
// that fails or hangs (a process wedged on its own locks) starves the
// watchdog, and systemd restarts the service. healthy runs on the
// watchdog's goroutine; nil means always healthy. A failing check is
// logged once, and its recovery.
func WatchdogWhile(ctx context.Context, healthy func() error) error {
	every, err := Interval()
	if err != nil {
		return err
	}
	if every <= 0 {
		return nil
	}
	watchdog(ctx, every, healthy, send)
	return nil
}

// watchdog is the ping loop, with the interval and the sender as
// parameters for tests under testing/synctest.
func watchdog(ctx context.Context, every time.Duration, healthy func() error, ping func(string) error) {
	t := time.NewTicker(every)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var err error
		if healthy != nil {
			if err = healthy(); err != nil {
				err = fmt.Errorf("health check failed, not pinging: %w", err)
			}
		}
		if err == nil {
			err = ping(daemon.SdNotifyWatchdog)
		}
		switch {
		case err != nil && !failing:
			slog.Warn("systemd watchdog ping failed", "err", err)
			failing = true
		case err == nil && failing:
			slog.Info("systemd watchdog ping works again")
			failing = false
		}
	}
}

// firstLine is s up to its first line break, for error messages.
func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
