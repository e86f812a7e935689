package daemon

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"

	"github.com/wsrc-go/wsrc/internal/testenv/wstest"
	"github.com/wsrc-go/wsrc/server"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		os.Exit(runChild())
	}
	goleak.VerifyTestMain(m)
}

// noEnv is a lookupEnv with nothing set.
func noEnv(string) (string, bool) { return "", false }

// discard is stdio with no input and no output.
var discard = stdio{strings.NewReader(""), io.Discard, io.Discard}

func TestFlags(t *testing.T) {
	var out bytes.Buffer
	o, explicit, err := parseFlags([]string{"--user-bind-host", "localhost", "--user-bind-port", "5220",
		"-card-bind-host=0.0.0.0", "--card-bind-port=5221", "--request-timeout", "3m", "--log-level", "debug"}, &out, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if o.userHost != "localhost" || o.userPort != 5220 || o.cardHost != "0.0.0.0" || o.cardPort != 5221 ||
		o.requestTimeout != 3*time.Minute || o.logLevel != "debug" || !explicit["card-bind-host"] || explicit["config"] {
		t.Fatalf("parsed %+v %v", o, explicit)
	}
	o, _, err = parseFlags(nil, &out, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if o.userHost != "127.0.0.1" || o.userPort != 4220 || o.cardHost != "127.0.0.1" || o.cardPort != 4221 ||
		o.requestTimeout != server.DefaultRequestTimeout || o.showRemoteAddr || o.configPath != DefaultConfigPath {
		t.Fatalf("defaults %+v", o)
	}
	lookupEnv = noEnv
	t.Cleanup(func() { lookupEnv = os.LookupEnv })
	for _, bad := range [][]string{
		{"--user-bind-port", "70000"}, {"--log-level", "loud"}, {"--request-timeout", "0s"}, {"extra"}, {"--nope"},
		{"--config", "/nonexistent/server.toml"},
	} {
		if code := run(context.Background(), bad, discard, nil); code != exitUsage {
			t.Errorf("%q: exit %d, want 2", bad, code)
		}
	}
}

func TestHelp(t *testing.T) {
	var out bytes.Buffer
	if code := run(context.Background(), []string{"--help"}, stdio{nil, &out, &out}, nil); code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"drop-in for pySim", "--user-bind-host", "--card-bind-port", "--request-timeout", "--log-level",
		"4220", "4221", "--config", "--tls-cert", "--insecure-no-auth", "check-config", "hash-password", "gen-token", "SIGHUP",
		"WSRC_SERVER_USER_BIND_HOST", "--status-bind", "127.0.0.1:4223", "--status-allowed-host", "--trace-pcap", "--trace-dir",
		"--trace-log", "--trace-no-redact", "--trace-card", "--trace-max-size", "--trace-keep", "healthcheck"} {
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

// testSettings resolves settings for tests: no configuration file unless
// path is given, free loopback ports, the flags in args.
func testSettings(t *testing.T, path string, args ...string) (*settings, options, map[string]bool) {
	t.Helper()
	if path == "" {
		path = "/nonexistent/wsrc-test.toml"
	} else {
		args = append(args, "--config", path)
	}
	o, explicit, err := parseFlags(append([]string{"--user-bind-port", "0", "--card-bind-port", "0", "--status-bind", "127.0.0.1:0"}, args...), io.Discard, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	o.configPath = path
	s, err := loadSettings(o, explicit)
	if err != nil {
		t.Fatal(err)
	}
	return s, o, explicit
}

// running is the whole server (serveMain) on loopback, in a goroutine.
type running struct {
	user, card string // addresses
	status     string // the status listener's address; "" when off
	cancel     context.CancelFunc
	done       chan int
	hup        chan os.Signal
	log        *syncBuffer
}

// start runs serveMain with s, on loopback listeners it opens itself.
func start(t *testing.T, s *settings, o options, explicit map[string]bool) *running {
	t.Helper()
	ul, err := listen("127.0.0.1", 0)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := listen("127.0.0.1", 0)
	if err != nil {
		t.Fatal(err)
	}
	s.userHost, s.userPort = "127.0.0.1", ul[0].Addr().(*net.TCPAddr).Port
	s.cardHost, s.cardPort = "127.0.0.1", cl[0].Addr().(*net.TCPAddr).Port
	closeAll(ul) // serveMain binds them again
	closeAll(cl)
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{user: ul[0].Addr().String(), card: cl[0].Addr().String(), cancel: cancel, done: make(chan int, 1),
		hup: make(chan os.Signal, 1), log: &syncBuffer{}}
	started := make(chan struct{})
	w := &watchWriter{want: "wsrc-server started", seen: started, w: io.MultiWriter(r.log, t.Output())}
	logger := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
	go func() { r.done <- serveMain(ctx, s, o, explicit, logger, r.hup) }()
	select {
	case <-started:
	case code := <-r.done:
		t.Fatalf("server exited with %d before it started", code)
	}
	t.Cleanup(func() { r.stop(t) })
	if m := statusAddrRE.FindStringSubmatch(r.log.String()); m != nil {
		r.status = m[1]
	}
	return r
}

// statusAddrRE finds the status listener's address in the log.
var statusAddrRE = regexp.MustCompile(`msg=listening port=status addr=(\S+)`)

// stop ends the server (once) and checks its exit status.
func (r *running) stop(t *testing.T) {
	t.Helper()
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	if code := <-r.done; code != 0 {
		t.Errorf("server exit %d", code)
	}
}

// The whole program on loopback: a card and a user connect, then the
// context ends (as on SIGTERM) and both are closed with 1001.
func TestRunAndShutdown(t *testing.T) {
	s, o, ex := testSettings(t, "")
	r := start(t, s, o, ex)
	card := wstest.Dial(t, "ws://"+r.card+"/")
	card.Send(`{"msg_type":"hello","client_type":"card","atr":"3b00"}`)
	if got := card.Recv(); !strings.Contains(got, "hello_ack") {
		t.Fatalf("card got %s", got)
	}
	user := wstest.Dial(t, "ws://"+r.user+"/")
	user.Send(`{"msg_type":"hello","client_type":"user"}`)
	if got := user.Recv(); !strings.Contains(got, "hello_ack") {
		t.Fatalf("user got %s", got)
	}
	r.stop(t)
	for _, p := range []*wstest.Peer{card, user} {
		// The card may get an identification c_apdu first.
		if code, reason, _ := p.DrainClosed(); code != websocket.CloseGoingAway || reason != "server shutting down" {
			t.Errorf("closed with %d %q, want 1001 server shutting down", code, reason)
		}
	}
	// The status listener goes last, so that /readyz and /metrics answer
	// while the connections drain.
	log := r.log.String()
	if i, j := strings.Index(log, "msg=\"connections closed\""), strings.Index(log, "msg=\"status listener closed\""); i < 0 || j < i {
		t.Errorf("shutdown order in the log:\n%s", log)
	}
}

// The relay binary must stay pure Go and free of the reader stacks: no
// libusb, no pcsclite, none of the agent's packages.
func TestNoReaderDependencies(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}} {{if .CgoFiles}}cgo{{end}} {{.Standard}}", "github.com/wsrc-go/wsrc/cmd/wsrc-server").CombinedOutput()
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
	lookupEnv = noEnv
	t.Cleanup(func() { lookupEnv = os.LookupEnv })
	started := make(chan struct{})
	w := &watchWriter{want: "wsrc-server started", seen: started, w: io.Discard}
	done := make(chan int, 1)
	go func() {
		done <- runWithSignals([]string{"--user-bind-port", "0", "--card-bind-port", "0", "--status-bind", "127.0.0.1:0", "--config", ""}, stdio{nil, io.Discard, w})
	}()
	<-started
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := <-done; code != 0 {
		t.Fatalf("exit %d, want 0", code)
	}
}

// watchWriter passes writes on to w and closes seen when a write
// contains want.
type watchWriter struct {
	mu   sync.Mutex
	want string
	seen chan struct{}
	w    io.Writer
}

func (w *watchWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.seen != nil && strings.Contains(string(p), w.want) {
		close(w.seen)
		w.seen = nil
	}
	return w.w.Write(p)
}

// syncBuffer is a bytes.Buffer safe for concurrent use, whose readers
// may wait for a text to be written.
type syncBuffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	changed chan struct{} // closed and replaced by every Write
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.changed != nil {
		close(b.changed)
		b.changed = nil
	}
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// waitFor waits until the text written contains want n times; it fails
// the test after 30 s (a bound against hangs, not a synchronisation).
func (b *syncBuffer) waitFor(t *testing.T, want string, n int) {
	t.Helper()
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	for {
		b.mu.Lock()
		if strings.Count(b.b.String(), want) >= n {
			b.mu.Unlock()
			return
		}
		if b.changed == nil {
			b.changed = make(chan struct{})
		}
		changed := b.changed
		b.mu.Unlock()
		select {
		case <-changed:
		case <-timeout.C:
			t.Fatalf("no %q (%d times) in the log:\n%s", want, n, b.String())
		}
	}
}

// runWithSignals runs the daemon as cmd/wsrc-server wires it: until
// SIGINT or SIGTERM, SIGHUP reloading.
func runWithSignals(args []string, std stdio) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	return Main(ctx, args, std.in, std.out, std.err, hup)
}
