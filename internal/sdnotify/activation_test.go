package sdnotify

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Socket activation is tested the way systemd does it: the test binary
// re-executes itself with real listening sockets as fds 3, 4, ... and
// LISTEN_FDS / LISTEN_FDNAMES set. The child (runChild) calls Listeners,
// reports what it got as JSON on stdout, then accepts one connection on
// every listener and writes the listener's name to it, so the parent can
// tell the sockets really work in the child.

const (
	childEnv    = "WSRC_SDNOTIFY_TEST_CHILD"
	childPIDEnv = "WSRC_SDNOTIFY_TEST_LISTEN_PID" // "self": set LISTEN_PID to the child's own pid
)

// childReport is what the child prints.
type childReport struct {
	Activated bool
	Names     map[string]int // name → number of listeners
	Err       string
	FDErrors  []FDError // the *FDError values found with errors.As
	EnvLeft   []string  // LISTEN_* variables still set after Listeners
}

// runChild is the child's whole life; it returns the exit code.
func runChild() int {
	if os.Getenv(childPIDEnv) == "self" {
		// systemd sets LISTEN_PID to the pid it execs; a parent
		// cannot know the child's pid before the fork, so the child
		// plays that part of systemd.
		os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	}
	s, err := Listeners()
	rep := childReport{Activated: s.Activated(), Names: map[string]int{}}
	if err != nil {
		rep.Err = err.Error()
		// errors.Join: look at every joined error.
		var joined interface{ Unwrap() []error }
		errs := []error{err}
		if errors.As(err, &joined) {
			errs = joined.Unwrap()
		}
		for _, e := range errs {
			var fe *FDError
			if errors.As(e, &fe) {
				rep.FDErrors = append(rep.FDErrors, FDError{FD: fe.FD, Name: fe.Name})
			}
		}
	}
	byName := map[string][]net.Listener{UserSocket: s.User, CardSocket: s.Card}
	for n, ls := range s.Other {
		byName[n] = ls
	}
	for n, ls := range byName {
		if len(ls) > 0 {
			rep.Names[n] = len(ls)
		}
	}
	for _, v := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		if _, ok := os.LookupEnv(v); ok {
			rep.EnvLeft = append(rep.EnvLeft, v)
		}
	}
	if err := json.NewEncoder(os.Stdout).Encode(rep); err != nil {
		return 3
	}
	for n, ls := range byName {
		for _, l := range ls {
			c, err := l.Accept()
			if err != nil {
				fmt.Fprintln(os.Stderr, "accept:", err)
				return 4
			}
			fmt.Fprintln(c, n)
			c.Close()
		}
	}
	if err := s.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "close:", err)
		return 5
	}
	return 0
}

// passed is one socket handed to the child.
type passed struct {
	name string // "" leaves its LISTEN_FDNAMES entry empty
	file *os.File
	addr string // to dial, for listeners
}

func tcpSocket(t *testing.T, name string) passed {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	// The child gets a dup; the parent's copies must not accept.
	l.Close()
	t.Cleanup(func() { f.Close() })
	return passed{name: name, file: f, addr: l.Addr().String()}
}

func udpSocket(t *testing.T, name string) passed {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := c.(*net.UDPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	t.Cleanup(func() { f.Close() })
	return passed{name: name, file: f}
}

// child runs the test binary as a socket-activated process: socks become
// fds 3, 4, ..., names (nil: unset) is LISTEN_FDNAMES, listenPID is
// LISTEN_PID or "self". It returns the child's report; wait reaps it.
func child(t *testing.T, socks []passed, names *string, listenPID string) (rep childReport, wait func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1", "LISTEN_FDS="+strconv.Itoa(len(socks)))
	if names != nil {
		cmd.Env = append(cmd.Env, "LISTEN_FDNAMES="+*names)
	}
	if listenPID == "self" {
		cmd.Env = append(cmd.Env, childPIDEnv+"=self")
	} else {
		cmd.Env = append(cmd.Env, "LISTEN_PID="+listenPID)
	}
	for _, s := range socks {
		cmd.ExtraFiles = append(cmd.ExtraFiles, s.file)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadBytes('\n')
	if err != nil {
		cmd.Wait()
		cancel()
		t.Fatalf("child printed no report: %v; stderr:\n%s", err, stderr.String())
	}
	if err := json.Unmarshal(line, &rep); err != nil {
		t.Fatalf("child report %q: %v", line, err)
	}
	return rep, func() {
		t.Helper()
		io.Copy(io.Discard, out)
		err := cmd.Wait()
		cancel()
		if err != nil {
			t.Errorf("child: %v; stderr:\n%s", err, stderr.String())
		}
	}
}

func fdNames(socks []passed) *string {
	var ns []string
	for _, s := range socks {
		ns = append(ns, s.name)
	}
	j := strings.Join(ns, ":")
	return &j
}

// hellos dials every socket first (the child accepts them in its own
// order), then returns the line each one answered with.
func hellos(t *testing.T, socks []passed) []string {
	t.Helper()
	var conns []net.Conn
	for _, s := range socks {
		c, err := net.DialTimeout("tcp", s.addr, 10*time.Second)
		if err != nil {
			t.Fatalf("dialling %s: %v", s.addr, err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	var got []string
	for _, c := range conns {
		c.SetDeadline(time.Now().Add(30 * time.Second))
		b, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("reading from %s: %v", c.RemoteAddr(), err)
		}
		got = append(got, strings.TrimSpace(string(b)))
	}
	return got
}

func TestListenersByName(t *testing.T) {
	socks := []passed{
		tcpSocket(t, "card"), // order must not matter
		tcpSocket(t, "user"),
		tcpSocket(t, "status"),
		tcpSocket(t, "user"), // a second user listener (e.g. IPv6-only twin)
	}
	rep, wait := child(t, socks, fdNames(socks), "self")
	if rep.Err != "" || !rep.Activated {
		t.Fatalf("child: activated=%v err=%q", rep.Activated, rep.Err)
	}
	want := map[string]int{"user": 2, "card": 1, "status": 1}
	if fmt.Sprint(rep.Names) != fmt.Sprint(want) {
		t.Errorf("listeners %v, want %v", rep.Names, want)
	}
	if len(rep.EnvLeft) > 0 {
		t.Errorf("%v still set: a child process would take the fds for its own", rep.EnvLeft)
	}
	for i, got := range hellos(t, socks) {
		if got != socks[i].name {
			t.Errorf("the socket passed as %q answered as %q", socks[i].name, got)
		}
	}
	wait()
}

func TestListenersUnnamed(t *testing.T) {
	socks := []passed{tcpSocket(t, ""), tcpSocket(t, "card")}
	rep, wait := child(t, socks, fdNames(socks), "self")
	want := map[string]int{"LISTEN_FD_3": 1, "card": 1}
	if rep.Err != "" || fmt.Sprint(rep.Names) != fmt.Sprint(want) {
		t.Errorf("listeners %v (err %q), want %v", rep.Names, rep.Err, want)
	}
	hellos(t, socks)
	wait()

	// No LISTEN_FDNAMES at all (systemd < 227 or a hand-made launcher).
	socks = []passed{tcpSocket(t, "")}
	rep, wait = child(t, socks, nil, "self")
	if rep.Err != "" || fmt.Sprint(rep.Names) != fmt.Sprint(map[string]int{"LISTEN_FD_3": 1}) {
		t.Errorf("without LISTEN_FDNAMES: %v (err %q)", rep.Names, rep.Err)
	}
	hellos(t, socks)
	wait()
}

func TestListenersOtherPID(t *testing.T) {
	socks := []passed{tcpSocket(t, "user")}
	rep, wait := child(t, socks, fdNames(socks), strconv.Itoa(os.Getpid()))
	if rep.Err != "" || rep.Activated {
		t.Errorf("fds meant for another pid taken: activated=%v err=%q", rep.Activated, rep.Err)
	}
	if len(rep.EnvLeft) > 0 {
		t.Errorf("%v still set", rep.EnvLeft)
	}
	wait()
}

func TestListenersNotAStreamSocket(t *testing.T) {
	socks := []passed{tcpSocket(t, "user"), udpSocket(t, "card")}
	rep, wait := child(t, socks, fdNames(socks), "self")
	if rep.Err == "" || rep.Activated {
		t.Fatalf("a UDP socket named card was accepted: %+v", rep)
	}
	if len(rep.FDErrors) != 1 || rep.FDErrors[0].FD != 4 || rep.FDErrors[0].Name != "card" {
		t.Errorf("FDErrors %+v, want fd 4 named card", rep.FDErrors)
	}
	if !strings.Contains(rep.Err, `fd 4 ("card")`) {
		t.Errorf("error %q does not name the descriptor", rep.Err)
	}
	wait()
}

func TestListenersNotActivated(t *testing.T) {
	t.Setenv("LISTEN_PID", "")
	t.Setenv("LISTEN_FDS", "")
	s, err := Listeners()
	if err != nil || s.Activated() {
		t.Errorf("Listeners() = %+v, %v; want zero, nil", s, err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("closing the zero Sockets: %v", err)
	}
}
