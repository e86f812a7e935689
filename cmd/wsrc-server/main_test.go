package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"

	"github.com/wsrc-go/wsrc/internal/wstest"
	"github.com/wsrc-go/wsrc/server"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestFlags(t *testing.T) {
	var out bytes.Buffer
	o, err := parseFlags([]string{"--user-bind-host", "localhost", "--user-bind-port", "5220",
		"-card-bind-host=0.0.0.0", "--card-bind-port=5221", "--request-timeout", "3m", "--log-level", "debug"}, &out)
	if err != nil {
		t.Fatal(err)
	}
	if o.userHost != "localhost" || o.userPort != 5220 || o.cardHost != "0.0.0.0" || o.cardPort != 5221 ||
		o.cfg.RequestTimeout != 3*time.Minute || o.logLevel != slog.LevelDebug {
		t.Fatalf("parsed %+v", o)
	}
	o, err = parseFlags(nil, &out)
	if err != nil {
		t.Fatal(err)
	}
	if o.userHost != "127.0.0.1" || o.userPort != 4220 || o.cardHost != "127.0.0.1" || o.cardPort != 4221 ||
		o.cfg.RequestTimeout != server.DefaultRequestTimeout || o.cfg.ShowRemoteAddr {
		t.Fatalf("defaults %+v", o)
	}
	for _, bad := range [][]string{
		{"--user-bind-port", "70000"}, {"--log-level", "loud"}, {"--request-timeout", "0s"}, {"extra"}, {"--nope"},
	} {
		if _, err := parseFlags(bad, io.Discard); err == nil {
			t.Errorf("%q accepted", bad)
		}
		if code := run(context.Background(), bad, io.Discard); code != 2 {
			t.Errorf("%q: exit %d, want 2", bad, code)
		}
	}
}

func TestHelp(t *testing.T) {
	var out bytes.Buffer
	if code := run(context.Background(), []string{"--help"}, &out); code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"drop-in for pySim", "--user-bind-host", "--card-bind-port", "--request-timeout", "--log-level", "4220", "4221"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help lacks %q:\n%s", want, out.String())
		}
	}
}

func TestListenLocalhost(t *testing.T) {
	lns, err := listen("localhost", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer closeAll(lns)
	port := lns[0].Addr().(*net.TCPAddr).Port
	for _, ln := range lns {
		a := ln.Addr().(*net.TCPAddr)
		if !a.IP.IsLoopback() || a.Port != port {
			t.Errorf("listening on %v, want loopback port %d", a, port)
		}
	}
}

// The whole program on loopback: a card and a user connect, then the
// context ends (as on SIGTERM) and both are closed with 1001.
func TestRunAndShutdown(t *testing.T) {
	ulns, err := listen("127.0.0.1", 0)
	if err != nil {
		t.Fatal(err)
	}
	clns, err := listen("127.0.0.1", 0)
	if err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(t.Output(), nil))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, server.New(server.Config{}, logger), logger, ulns, clns) }()

	card := wstest.Dial(t, "ws://"+clns[0].Addr().String()+"/")
	card.Send(`{"msg_type":"hello","client_type":"card","atr":"3b00"}`)
	if got := card.Recv(); !strings.Contains(got, "hello_ack") {
		t.Fatalf("card got %s", got)
	}
	user := wstest.Dial(t, "ws://"+ulns[0].Addr().String()+"/")
	user.Send(`{"msg_type":"hello","client_type":"user"}`)
	if got := user.Recv(); !strings.Contains(got, "hello_ack") {
		t.Fatalf("user got %s", got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, p := range []*wstest.Peer{card, user} {
		// The card may get an identification c_apdu first.
		if code, reason, _ := p.DrainClosed(); code != websocket.CloseGoingAway || reason != "server shutting down" {
			t.Errorf("closed with %d %q, want 1001 server shutting down", code, reason)
		}
	}
}

// The relay binary must stay pure Go and free of the reader stacks: no
// libusb, no pcsclite, none of the agent's packages.
func TestNoReaderDependencies(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}} {{if .CgoFiles}}cgo{{end}} {{.Standard}}", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		pkg := f[0]
		for _, bad := range []string{"github.com/google/gousb", "github.com/ebfe/scard", "/ccid", "/pcsc", "/agent"} {
			if strings.Contains(pkg, bad) {
				t.Errorf("wsrc-server depends on %s", pkg)
			}
		}
		if len(f) == 3 && f[1] == "cgo" && f[2] == "false" {
			t.Errorf("wsrc-server depends on the cgo package %s", pkg)
		}
	}
}

// SIGTERM ends the program in order, with exit status 0.
func TestSIGTERM(t *testing.T) {
	started := make(chan struct{})
	w := &watchWriter{want: "wsrc-server started", seen: started}
	done := make(chan int, 1)
	go func() { done <- runWithSignals([]string{"--user-bind-port", "0", "--card-bind-port", "0"}, w) }()
	<-started
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := <-done; code != 0 {
		t.Fatalf("exit %d, want 0", code)
	}
}

// watchWriter closes seen when a write contains want.
type watchWriter struct {
	mu   sync.Mutex
	want string
	seen chan struct{}
}

func (w *watchWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.seen != nil && strings.Contains(string(p), w.want) {
		close(w.seen)
		w.seen = nil
	}
	return len(p), nil
}
