package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsrc-go/wsrc/internal/testenv/wstest"
	"github.com/wsrc-go/wsrc/server"
)

// Socket activation and sd_notify are tested the way systemd does them:
// the test binary re-executes itself as the server (runChild) with real
// listening sockets as fds 3 and 4, LISTEN_FDS/LISTEN_FDNAMES set, and
// NOTIFY_SOCKET pointing at a datagram socket the test reads.

const (
	childEnv     = "WSRC_SERVER_TEST_CHILD"
	childArgsEnv = "WSRC_SERVER_TEST_ARGS" // JSON array of arguments
)

// runChild is the child's whole life: wsrc-server with the arguments
// given, as under systemd.
func runChild() int {
	// systemd sets LISTEN_PID to the pid it execs; the parent cannot know
	// it before the fork, so the child plays that part.
	os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	var args []string
	if err := json.Unmarshal([]byte(os.Getenv(childArgsEnv)), &args); err != nil {
		fmt.Fprintln(os.Stderr, "bad", childArgsEnv, err)
		return 3
	}
	return runWithSignals(args, stdio{os.Stdin, os.Stdout, os.Stderr})
}

// fakeNotify listens as systemd's notification socket.
func fakeNotify(t *testing.T) (path string, msgs <-chan string) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan string, 64)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if err != nil {
				close(ch)
				return
			}
			ch <- string(buf[:n])
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return path, ch
}

// await reads notifications until one contains want.
// awaitAll waits until a notification containing each of wants has
// arrived, in any order.
func awaitAll(t *testing.T, msgs <-chan string, wants ...string) {
	t.Helper()
	left := slices.Clone(wants)
	timer := time.NewTimer(30 * time.Second)
	defer timer.Stop()
	for len(left) > 0 {
		select {
		case m, ok := <-msgs:
			if !ok {
				t.Fatalf("notification socket closed while waiting for %q", left)
			}
			left = slices.DeleteFunc(left, func(w string) bool { return strings.Contains(m, w) })
		case <-timer.C:
			t.Fatalf("no notifications %q", left)
		}
	}
}

func await(t *testing.T, msgs <-chan string, want string) string {
	t.Helper()
	timer := time.NewTimer(30 * time.Second)
	defer timer.Stop()
	for {
		select {
		case m, ok := <-msgs:
			if !ok {
				t.Fatalf("notification socket closed while waiting for %q", want)
			}
			if strings.Contains(m, want) {
				return m
			}
		case <-timer.C:
			t.Fatalf("no notification %q", want)
		}
	}
}

func tcpListenerFile(t *testing.T) (*os.File, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	l.Close() // the child has its own copy
	t.Cleanup(func() { f.Close() })
	return f, l.Addr().String()
}

// child is wsrc-server running in a re-executed test binary (runChild),
// as systemd would run it.
type child struct {
	cmd    *exec.Cmd
	exited chan error // Wait's result
	stderr *syncBuffer
}

// startChild starts the child with args, the environment variables env
// and the listening sockets files (fds 3, 4, ...); it is killed when the
// test ends without having waited for it, and when ctx ends.
func startChild(t *testing.T, ctx context.Context, args []string, env []string, files ...*os.File) *child {
	t.Helper()
	a, _ := json.Marshal(args)
	c := &child{cmd: exec.CommandContext(ctx, os.Args[0], "-test.run=^$"), exited: make(chan error, 1), stderr: &syncBuffer{}}
	c.cmd.Env = append(append(os.Environ(), childEnv+"=1", childArgsEnv+"="+string(a)), env...)
	c.cmd.ExtraFiles = files
	c.cmd.Stderr = c.stderr
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { c.exited <- c.cmd.Wait() }()
	t.Cleanup(func() {
		if c.cmd.ProcessState == nil {
			c.cmd.Process.Kill()
			<-c.exited
		}
	})
	return c
}

// signal sends sig to the child.
func (c *child) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := c.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

// wait waits for the child to exit and fails the test unless it exits 0.
func (c *child) wait(t *testing.T) {
	t.Helper()
	if err := <-c.exited; err != nil {
		t.Fatalf("child: %v\n%s", err, c.stderr.String())
	}
}

// The server takes its ports from systemd, reports READY=1 and a status
// line that follows the cards and users, feeds the watchdog, and on
// SIGTERM says STOPPING=1, closes users with a reason and exits 0.
func TestSocketActivationAndNotify(t *testing.T) {
	notify, msgs := fakeNotify(t)
	userF, userAddr := tcpListenerFile(t)
	cardF, cardAddr := tcpListenerFile(t)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	// The bind flags name a port that is surely not free: socket
	// activation must override them.
	c := startChild(t, ctx, []string{"--config", "", "--user-bind-port", "1", "--card-bind-port", "1", "--status-bind", "", "--log-level", "debug"},
		[]string{"NOTIFY_SOCKET=" + notify, "LISTEN_FDS=2", "LISTEN_FDNAMES=card:user", "WATCHDOG_USEC=200000"}, cardF, userF)
	await(t, msgs, "READY=1")
	await(t, msgs, "WATCHDOG=1") // every 100 ms: half of WATCHDOG_USEC
	card := wstest.Dial(t, "ws://"+cardAddr+"/")
	card.Send(`{"msg_type":"hello","client_type":"card","atr":"3b00"}`)
	if got := card.Recv(); !strings.Contains(got, "hello_ack") {
		t.Fatalf("card got %s", got)
	}
	card.Recv() // SELECT ISD-R
	card.Send(`{"response": "", "sw": "6a82", "msg_type": "r_apdu"}`)
	card.Recv() // SELECT MF
	card.Send(`{"response": "", "sw": "6a82", "msg_type": "r_apdu"}`)
	card.Recv() // ready
	user := wstest.Dial(t, "ws://"+userAddr+"/")
	user.Send(`{"msg_type":"hello","client_type":"user"}`)
	user.Recv()
	await(t, msgs, "STATUS=1 card (0 in use), 1 user")

	c.signal(t, syscall.SIGTERM)
	await(t, msgs, "STOPPING=1")
	if code, reason := user.WaitClosed(); code != websocket.CloseGoingAway || reason != "server shutting down" {
		t.Errorf("user closed with %d %q", code, reason)
	}
	c.wait(t)
	if !strings.Contains(c.stderr.String(), "user port from systemd socket activation") {
		t.Errorf("log:\n%s", c.stderr.String())
	}
}

// A socket-activated port without accounts on a non-loopback address is
// not served: exiting would make systemd start the server again at the
// next connection, in a loop. The server runs, answers 503, says why in
// the log and the status line, and serves once a reload brings accounts.
func TestSocketActivationOpenPortWaitsForAccounts(t *testing.T) {
	l, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Skip("cannot listen on 0.0.0.0:", err)
	}
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	userURL := fmt.Sprintf("http://127.0.0.1:%d/", l.Addr().(*net.TCPAddr).Port)
	l.Close()
	defer f.Close()
	notify, msgs := fakeNotify(t)
	path := writeConfig(t, "# no accounts yet\n")
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	c := startChild(t, ctx, []string{"--config", path, "--card-bind-port", "0", "--status-bind", ""},
		[]string{"NOTIFY_SOCKET=" + notify, "LISTEN_FDS=1", "LISTEN_FDNAMES=user"}, f)
	// The first status line and READY=1 come from different goroutines,
	// in either order.
	awaitAll(t, msgs, "READY=1", "STATUS=NOT SERVING the user port(s): no accounts, see the log; 0 cards")
	if code := httpStatus(t, userURL); code != http.StatusServiceUnavailable {
		t.Fatalf("user port answered %d, want 503", code)
	}
	if log := c.stderr.String(); !strings.Contains(log, "NOT SERVING this port") || !strings.Contains(log, "has no authentication") {
		t.Fatalf("log does not say why:\n%s", log)
	}
	if err := os.WriteFile(path, []byte("[[user]]\nname = \"alice\"\npassword_hash = \""+cheapHash(t, "pw")+"\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c.signal(t, syscall.SIGHUP)
	await(t, msgs, "STATUS=0 cards (0 in use), 0 users")
	if code := httpStatus(t, userURL); code != http.StatusUnauthorized {
		t.Fatalf("user port answered %d after the reload, want 401", code)
	}
	c.signal(t, syscall.SIGTERM)
	c.wait(t)
	if !strings.Contains(c.stderr.String(), "serving the port now that it has accounts") {
		t.Errorf("log:\n%s", c.stderr.String())
	}
}

// httpStatus returns the status code of a GET of url.
func httpStatus(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestStatusLine(t *testing.T) {
	for st, want := range map[server.Stats]string{
		{}:                                  "0 cards (0 in use), 0 users",
		{Cards: 1, Users: 1}:                "1 card (0 in use), 1 user",
		{Cards: 3, CardsInUse: 2, Users: 5}: "3 cards (2 in use), 5 users",
	} {
		if got := statusLine(st); got != want {
			t.Errorf("statusLine(%+v) = %q, want %q", st, got, want)
		}
	}
}

// A burst of events gives at most one status line per statusEvery, and
// an unchanged line is not sent again.
func TestStatusRateLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var users atomic.Int64
		n := newStatusNotifier()
		sent := make(chan string, 100)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			n.run(ctx, func() server.Stats { return server.Stats{Users: int(users.Load())} }, time.Second, func(f string, a ...any) error { sent <- fmt.Sprintf(f, a...); return nil })
		}()
		synctest.Wait()
		if got := <-sent; got != "0 cards (0 in use), 0 users" {
			t.Fatalf("first line %q", got)
		}
		n.Connected(server.ConnEvent{}) // counts unchanged
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if len(sent) != 0 {
			t.Fatalf("%d lines for unchanged counts", len(sent))
		}
		// 100 changes in 10 s: about 10 lines, the last with the last counts.
		for range 100 {
			users.Add(1)
			n.Connected(server.ConnEvent{})
			time.Sleep(100 * time.Millisecond)
			synctest.Wait()
		}
		time.Sleep(time.Second)
		synctest.Wait()
		cancel()
		<-done
		var lines []string
		for len(sent) > 0 {
			lines = append(lines, <-sent)
		}
		if len(lines) < 9 || len(lines) > 12 || lines[len(lines)-1] != "0 cards (0 in use), 100 users" {
			t.Fatalf("%d lines: %q", len(lines), lines)
		}
	})
}
