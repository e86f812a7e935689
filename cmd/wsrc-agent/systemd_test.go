package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsrc-go/wsrc/agent"
	"github.com/wsrc-go/wsrc/agent/agenttest"
)

// fakeManager is a Manager whose state a test sets and whose event loop
// a test can wedge.
type fakeManager struct {
	mu      sync.Mutex
	st      agent.State   // guarded by mu
	changed chan struct{} // guarded by mu
	wedged  bool          // guarded by mu: Ping gets no answer
	runErr  error         // Run returns it at once when set
}

func newFakeManager() *fakeManager { return &fakeManager{changed: make(chan struct{})} }

func (m *fakeManager) Run(ctx context.Context) error {
	if m.runErr != nil {
		return m.runErr
	}
	<-ctx.Done()
	return nil
}

func (m *fakeManager) State() (agent.State, <-chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.st, m.changed
}

func (m *fakeManager) set(st agent.State) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.st = st
	close(m.changed)
	m.changed = make(chan struct{})
}

func (m *fakeManager) wedge() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.wedged = true
}

func (m *fakeManager) Ping(ctx context.Context) error {
	m.mu.Lock()
	wedged := m.wedged
	m.mu.Unlock()
	if wedged {
		<-ctx.Done()
		return ctx.Err()
	}
	return nil
}

// notes records the notifications sent, with the fake time since the
// test began.
type notes struct {
	start time.Time
	mu    sync.Mutex
	got   []string // guarded by mu: "5s STATUS=..."
}

func (n *notes) add(s string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.got = append(n.got, fmt.Sprintf("%v %s", time.Since(n.start), s))
	return nil
}

func (n *notes) list() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.got)
}

// fakeSystemd replaces the sdnotify calls for the test; watchdog is the
// unit's watchdog interval (0: none).
func fakeSystemd(t *testing.T, watchdog time.Duration) *notes {
	n := &notes{start: time.Now()}
	saved := []any{sdReady, sdStatus, sdStopping, sdInterval, sdWatchdog}
	sdReady = func() error { return n.add("READY=1") }
	sdStatus = func(line string) error { return n.add("STATUS=" + line) }
	sdStopping = func() error { return n.add("STOPPING=1") }
	sdInterval = func() (time.Duration, error) { return watchdog, nil }
	sdWatchdog = func(ctx context.Context) error {
		n.add("watchdog on")
		<-ctx.Done()
		return n.add("watchdog off")
	}
	t.Cleanup(func() {
		sdReady = saved[0].(func() error)
		sdStatus = saved[1].(func(string) error)
		sdStopping = saved[2].(func() error)
		sdInterval = saved[3].(func() (time.Duration, error))
		sdWatchdog = saved[4].(func(context.Context) error)
	})
	return n
}

// runFake runs runWithSystemd on m until stopAt, while script runs.
func runFake(t *testing.T, m manager, stopAt time.Duration, script func()) error {
	ctx, cancel := context.WithCancel(context.Background())
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		err = runWithSystemd(ctx, m, slog.New(slog.DiscardHandler))
	}()
	start := time.Now()
	script()
	time.Sleep(stopAt - time.Since(start))
	cancel()
	<-done
	return err
}

func checkNotes(t *testing.T, n *notes, want ...string) {
	t.Helper()
	if got := n.list(); !slices.Equal(got, want) {
		t.Errorf("notifications:\n got %q\nwant %q", got, want)
	}
}

// TestSystemdReadyOnFirstSession: READY=1 when the server has accepted a
// session; STATUS= follows the counts, at most every 5 s; SIGTERM sends
// STOPPING=1.
func TestSystemdReadyOnFirstSession(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := fakeSystemd(t, 0)
		m := newFakeManager()
		err := runFake(t, m, 20*time.Second, func() {
			time.Sleep(time.Second)
			m.set(agent.State{Cards: 1})
			time.Sleep(time.Second)
			m.set(agent.State{Cards: 2})
			time.Sleep(time.Second)
			m.set(agent.State{Cards: 2, Connected: 1, EverConnected: true})
			time.Sleep(5 * time.Second)
			m.set(agent.State{Cards: 2, Connected: 2, EverConnected: true})
		})
		if err != nil {
			t.Fatal(err)
		}
		checkNotes(t, n,
			"0s STATUS=no cards, 0 connected",
			"3s READY=1",
			"5s STATUS=2 cards, 1 connected",
			"10s STATUS=2 cards, 2 connected",
			"20s STOPPING=1",
			"20s STATUS=stopping: closing card sessions",
		)
	})
}

// TestSystemdReadyAfterGrace: with no session, READY=1 comes after the
// start-up grace, so systemd does not kill an agent whose server is down.
func TestSystemdReadyAfterGrace(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := fakeSystemd(t, 0)
		m := newFakeManager()
		m.set(agent.State{Cards: 1})
		runFake(t, m, 15*time.Second, func() {})
		checkNotes(t, n,
			"0s STATUS=1 card, 0 connected",
			"10s READY=1",
			"15s STOPPING=1",
			"15s STATUS=stopping: closing card sessions",
		)
	})
}

// TestSystemdWatchdog: the watchdog pings run while the manager answers
// and stop once it does not (here it wedges at 25 s; the check at 30 s
// times out at 40 s).
func TestSystemdWatchdog(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := fakeSystemd(t, 10*time.Second)
		m := newFakeManager()
		m.set(agent.State{EverConnected: true})
		runFake(t, m, time.Minute, func() {
			time.Sleep(25 * time.Second)
			m.wedge()
		})
		got := n.list()
		if !slices.Contains(got, "0s watchdog on") || !slices.Contains(got, "40s watchdog off") {
			t.Errorf("notifications %q", got)
		}
	})
	synctest.Test(t, func(t *testing.T) {
		n := fakeSystemd(t, 10*time.Second)
		runFake(t, newFakeManager(), time.Minute, func() {})
		if got := n.list(); !slices.Contains(got, "1m0s watchdog off") {
			t.Errorf("healthy manager: notifications %q", got)
		}
	})
}

// TestSystemdManagerFails: when Run gives up by itself there is no
// STOPPING=1 (the exit status tells systemd).
func TestSystemdManagerFails(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := fakeSystemd(t, 0)
		m := newFakeManager()
		m.runErr = errors.New("backends gone")
		err := runWithSystemd(context.Background(), m, slog.New(slog.DiscardHandler))
		if err != m.runErr {
			t.Fatalf("err %v", err)
		}
		for _, s := range n.list() {
			if strings.Contains(s, "STOPPING") || strings.Contains(s, "READY") {
				t.Errorf("sent %q", s)
			}
		}
	})
}

// TestSystemdNotifySocket runs the real program (this test binary
// re-executed) under a fake systemd (NOTIFY_SOCKET): READY=1 once its
// session is up, and on SIGTERM STOPPING=1, the session closed with 1001,
// and exit status 0.
func TestSystemdNotifySocket(t *testing.T) {
	if testing.Short() {
		t.Skip("re-executes the test binary")
	}
	sock := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Skipf("no unixgram sockets here: %v", err)
	}
	defer c.Close()
	got := make(chan string, 16)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if err != nil {
				close(got)
				return
			}
			got <- string(buf[:n])
		}
	}()
	next := func(want string) {
		t.Helper()
		for {
			select {
			case s := <-got:
				if strings.Contains(s, want) {
					return
				}
			case <-time.After(20 * time.Second):
				t.Fatalf("no %q from the agent", want)
			}
		}
	}

	srv := agenttest.NewServer(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock, "WSRC_AGENT_TEST_MAIN=1", "WSRC_AGENT_TEST_ARGS=--sim 1 --server "+srv.URL())
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	conn := srv.Accept()
	conn.Hello()
	conn.Transmit([]byte{0x00, 0xa4, 0x00, 0x00, 0x02, 0x3f, 0x00})
	next("READY=1")
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	next("STOPPING=1")
	if code, _ := conn.ExpectClose(); code != websocket.CloseGoingAway {
		t.Errorf("close code %d, want 1001", code)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("exit: %v; stderr:\n%s", err, stderr.String())
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-exited
		t.Fatalf("no exit within 10s of SIGTERM; stderr:\n%s", stderr.String())
	}
	c.Close()
	for range got { // drain until the reader has exited
	}
}
