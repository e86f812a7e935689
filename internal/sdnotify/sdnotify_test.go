package sdnotify

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(runChild())
	}
	goleak.VerifyTestMain(m)
}

// fakeSystemd listens on a unixgram socket in a temporary directory, as
// systemd's notification socket, and points NOTIFY_SOCKET at it.
func fakeSystemd(t *testing.T) *net.UnixConn {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatalf("listening on the fake notify socket: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	return c
}

// next reads one notification; a generous deadline only guards against a
// hang, it is never what the test waits for.
func next(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("reading a notification: %v", err)
	}
	return string(buf[:n])
}

func TestNotifications(t *testing.T) {
	c := fakeSystemd(t)
	for _, tc := range []struct {
		name string
		call func() error
		want string
	}{
		{"ready", Ready, "READY=1"},
		{"status", func() error { return Status("%d cards, %s", 2, "1 user") }, "STATUS=2 cards, 1 user"},
		{"status with line breaks", func() error { return Status("a\nb\r\nc") }, "STATUS=a b c"},
		{"stopping", Stopping, "STOPPING=1"},
		{"ping", Ping, "WATCHDOG=1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.call(); err != nil {
				t.Fatalf("err = %v", err)
			}
			if got := next(t, c); got != tc.want {
				t.Errorf("sent %q, want %q", got, tc.want)
			}
		})
	}
	if os.Getenv("NOTIFY_SOCKET") == "" {
		t.Error("NOTIFY_SOCKET was unset; later notifications would be lost")
	}
}

func TestAbstractNotifySocket(t *testing.T) {
	name := "@wsrc-sdnotify-test-" + strconv.Itoa(os.Getpid())
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Skipf("no abstract unix sockets here: %v", err)
	}
	defer c.Close()
	t.Setenv("NOTIFY_SOCKET", name)
	if err := Ready(); err != nil {
		t.Fatal(err)
	}
	if got := next(t, c); got != "READY=1" {
		t.Errorf("sent %q", got)
	}
}

func TestNotUnderSystemdIsNoop(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	t.Setenv("WATCHDOG_USEC", "")
	for name, f := range map[string]func() error{
		"Ready": Ready, "Stopping": Stopping, "Ping": Ping,
		"Status":   func() error { return Status("x") },
		"Watchdog": func() error { return Watchdog(t.Context()) }, // returns at once
	} {
		if err := f(); err != nil {
			t.Errorf("%s: %v, want nil", name, err)
		}
	}
}

func TestUnreachableNotifySocket(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "gone"))
	err := Ready()
	if err == nil {
		t.Fatal("no error for a NOTIFY_SOCKET nobody listens on")
	}
	if !strings.Contains(err.Error(), "READY=1") {
		t.Errorf("error %q does not say what was being sent", err)
	}
}

func TestInterval(t *testing.T) {
	me := strconv.Itoa(os.Getpid())
	for _, tc := range []struct {
		usec, pid string
		want      time.Duration
		wantErr   bool
	}{
		{"", "", 0, false},
		{"30000000", "", 15 * time.Second, false},
		{"30000000", me, 15 * time.Second, false},
		{"30000000", "1", 0, false}, // meant for another process
		{"thirty", "", 0, true},
		{"-5", "", 0, true},
		{"30000000", "me", 0, true},
	} {
		t.Setenv("WATCHDOG_USEC", tc.usec)
		t.Setenv("WATCHDOG_PID", tc.pid)
		got, err := Interval()
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("WATCHDOG_USEC=%q WATCHDOG_PID=%q: %v, %v; want %v, error %v",
				tc.usec, tc.pid, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestWatchdogBadSetting(t *testing.T) {
	t.Setenv("WATCHDOG_USEC", "soon")
	if err := Watchdog(t.Context()); err == nil {
		t.Error("no error for a malformed WATCHDOG_USEC")
	}
}

// TestWatchdogPings drives the real loop against the fake socket with a
// tiny WatchdogSec, and checks that cancelling ends it.
func TestWatchdogPings(t *testing.T) {
	c := fakeSystemd(t)
	t.Setenv("WATCHDOG_USEC", "2000") // 2 ms: a ping every millisecond
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- Watchdog(ctx) }()
	for range 3 {
		if got := next(t, c); got != "WATCHDOG=1" {
			t.Fatalf("sent %q, want WATCHDOG=1", got)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Watchdog returned %v after cancel, want nil", err)
	}
}

// TestWatchdogTiming checks, on synctest's clock, that pings come every
// half WatchdogSec and that failed pings do not stop the loop.
func TestWatchdogTiming(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		var (
			mu sync.Mutex
			at []time.Duration
		)
		pings := func() []time.Duration {
			mu.Lock()
			defer mu.Unlock()
			return slices.Clone(at)
		}
		start := time.Now()
		ping := func(state string) error {
			if state != "WATCHDOG=1" {
				t.Errorf("sent %q", state)
			}
			mu.Lock()
			defer mu.Unlock()
			at = append(at, time.Since(start))
			if len(at) == 2 {
				return errors.New("socket gone for a moment")
			}
			return nil
		}
		done := make(chan struct{})
		go func() { watchdog(ctx, 15*time.Second, nil, ping); close(done) }()

		time.Sleep(14 * time.Second)
		synctest.Wait()
		if got := pings(); len(got) != 0 {
			t.Fatalf("pinged at %v, before the first interval", got)
		}
		time.Sleep(47 * time.Second) // t = 61 s
		synctest.Wait()
		got := pings()
		want := []time.Duration{15 * time.Second, 30 * time.Second, 45 * time.Second, 60 * time.Second}
		if len(got) != len(want) {
			t.Fatalf("pinged at %v, want %v", got, want)
		}
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("ping %d at %v, want %v", i, got[i], want[i])
			}
		}
		cancel()
		<-done
	})
}

// TestWatchdogWhile checks that pings stop while the health check fails
// and come back when it passes again.
func TestWatchdogWhile(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		var healthy, pinged atomic.Int32
		healthy.Store(1)
		check := func() error {
			if healthy.Load() == 0 {
				return errors.New("relay wedged")
			}
			return nil
		}
		done := make(chan struct{})
		go func() {
			watchdog(ctx, 10*time.Second, check, func(string) error { pinged.Add(1); return nil })
			close(done)
		}()
		time.Sleep(25 * time.Second) // pings at 10 s, 20 s
		synctest.Wait()
		healthy.Store(0)
		time.Sleep(30 * time.Second) // checks at 30, 40, 50 s fail
		synctest.Wait()
		if n := pinged.Load(); n != 2 {
			t.Fatalf("%d pings while unhealthy, want the 2 from before", n)
		}
		healthy.Store(1)
		time.Sleep(10 * time.Second) // 60 s
		synctest.Wait()
		if n := pinged.Load(); n != 3 {
			t.Fatalf("%d pings after recovery, want 3", n)
		}
		cancel()
		<-done
	})
}
