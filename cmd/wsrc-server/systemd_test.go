package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsrc-go/wsrc/internal/wstest"
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
	args, _ := json.Marshal([]string{"--config", "", "--user-bind-port", "1", "--card-bind-port", "1", "--log-level", "debug"})
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1", childArgsEnv+"="+string(args), "NOTIFY_SOCKET="+notify,
		"LISTEN_FDS=2", "LISTEN_FDNAMES=card:user", "WATCHDOG_USEC=200000")
	cmd.ExtraFiles = []*os.File{cardF, userF}
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-exited
		}
	}()
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

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	await(t, msgs, "STOPPING=1")
	if code, reason := user.WaitClosed(); code != websocket.CloseGoingAway || reason != "server shutting down" {
		t.Errorf("user closed with %d %q", code, reason)
	}
	if err := <-exited; err != nil {
		t.Fatalf("child: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "user port from systemd socket activation") {
		t.Errorf("log:\n%s", stderr.String())
	}
}

// A socket-activated port without accounts on a non-loopback address is
// refused (exit 2), as a bind flag would be.
func TestSocketActivationOpenPortRefused(t *testing.T) {
	l, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Skip("cannot listen on 0.0.0.0:", err)
	}
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	defer f.Close()
	args, _ := json.Marshal([]string{"--config", "", "--card-bind-port", "0"})
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1", childArgsEnv+"="+string(args), "LISTEN_FDS=1", "LISTEN_FDNAMES=user")
	cmd.ExtraFiles = []*os.File{f}
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitUsage {
		t.Fatalf("exit %v, want 2:\n%s", err, out)
	}
	if !strings.Contains(string(out), "has no authentication") {
		t.Fatalf("output:\n%s", out)
	}
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
