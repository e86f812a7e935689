package pcscdtest

import (
	"context"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestEnvPointsAtPrivateSocket(t *testing.T) {
	if got := os.Getenv("PCSCLITE_CSOCK_NAME"); got != SocketPath() || strings.HasPrefix(got, "/run/") {
		t.Fatalf("PCSCLITE_CSOCK_NAME = %q, want the private %q", got, SocketPath())
	}
}

func TestStartStopRestart(t *testing.T) {
	d := Start(t)
	pid := d.PID()
	if pid == 0 {
		t.Fatal("no PID")
	}
	for i := range Slots {
		if !strings.Contains(d.Log(), "Attempting startup of "+d.Reader(i)) {
			t.Fatalf("reader %q not started; log:\n%s", d.Reader(i), d.Log())
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.WaitLog(ctx, "Disabling USB support"); err != nil {
		t.Errorf("private pcscd did not disable USB support: %v; log:\n%s", err, d.Log())
	}
	conn, err := net.Dial("unix", SocketPath())
	if err != nil {
		t.Fatalf("dialing the private socket: %v", err)
	}
	conn.Close()

	d.Stop()
	if d.PID() != 0 {
		t.Fatal("PID after Stop")
	}
	if err := syscallKill0(pid); err == nil {
		t.Fatalf("pcscd %d still running after Stop", pid)
	}
	if _, err := net.Dial("unix", SocketPath()); err == nil {
		t.Fatal("socket still answers after Stop")
	}
	d.Stop() // no-op

	d.StartAgain()
	if d.PID() == pid || d.PID() == 0 {
		t.Fatalf("StartAgain PID %d (was %d)", d.PID(), pid)
	}
	d.Restart()
	if err := d.WaitLog(ctx, "daemon ready"); err != nil {
		t.Fatal(err)
	}
	if d.SlotAddr(1) == d.SlotAddr(0) || !strings.HasPrefix(d.SlotAddr(0), "127.0.0.1:") {
		t.Fatalf("slot addresses %s, %s", d.SlotAddr(0), d.SlotAddr(1))
	}
}

func TestWaitLogCancelled(t *testing.T) {
	b := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- b.wait(ctx, "never") }()
	b.WriteLine("something else")
	cancel()
	if err := <-done; err == nil {
		t.Fatal("wait returned nil after cancel")
	}
	if err := (&Daemon{}).WaitLog(ctx, "x"); err == nil {
		t.Fatal("WaitLog on unstarted daemon returned nil")
	}
}

// recorder is a testing.TB that records Skipf/Fatalf.
type recorder struct {
	testing.TB
	skipped, failed string
}

func (r *recorder) Helper() {}
func (r *recorder) Skipf(f string, a ...any) {
	r.skipped = f
	runtime.Goexit()
}
func (r *recorder) Fatalf(f string, a ...any) {
	r.failed = f
	runtime.Goexit()
}

func TestUnavailableSkipsOrFailsUnderCI(t *testing.T) {
	for _, ci := range []string{"", "true"} {
		t.Setenv("CI", ci)
		r := &recorder{TB: t}
		done := make(chan struct{})
		go func() {
			defer close(done)
			unavailable(r, "pcscd not found")
		}()
		<-done
		if ci == "true" && r.failed == "" || ci == "" && r.skipped == "" {
			t.Errorf("CI=%q: skipped=%q failed=%q", ci, r.skipped, r.failed)
		}
	}
}

func TestMissingDriver(t *testing.T) {
	saved := vpcdDrivers
	defer func() { vpcdDrivers = saved }()
	vpcdDrivers = []string{"/nonexistent/libifdvpcd.so"}
	if _, err := pcscdPath(); err != nil {
		t.Skip("no pcscd here")
	}
	if m := missing(); !strings.Contains(m, "vsmartcard-vpcd") {
		t.Fatalf("missing() = %q", m)
	}
}
