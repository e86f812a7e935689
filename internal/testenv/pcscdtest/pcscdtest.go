// Package pcscdtest runs a private pcscd with vpcd reader slots for tests
// against the real PC/SC stack, so that tests never touch the system's
// pcscd (or its USB readers) and can stop and restart theirs at will.
//
// Data flow in a real-stack test:
//
//	test ── pcsc/ ── libpcsclite ──$PCSCLITE_CSOCK_NAME──► private pcscd
//	                                                         │ vpcd driver
//	test ── internal/vpcd.Slot ──TCP 127.0.0.1:port──────────┘
//
// How the daemon is made private (pcsc-lite 1.9.9):
//
//   - Socket: the client library takes the socket path from the
//     environment variable PCSCLITE_CSOCK_NAME, but pcscd itself has
//     /run/pcscd/pcscd.comm compiled in. So this package creates the
//     listening socket itself, in a temporary directory, and hands it to
//     pcscd the way systemd's socket activation does (fd 3, LISTEN_FDS=1,
//     LISTEN_PID). As a bonus the socket accepts connections (into its
//     backlog) from the moment Start returns.
//   - /run/pcscd: pcscd still writes and removes /run/pcscd/pcscd.pid, and
//     refuses to start when another pcscd's files are there. pcscd runs in
//     a private mount namespace (unshare(1); with an unprivileged user
//     namespace when not root) where a tmpfs covers /run and the temporary
//     directory is bind-mounted on /run/pcscd.
//   - USB readers: a tmpfs also covers /usr/lib/pcsc/drivers inside the
//     namespace, so the private pcscd finds no driver bundles ("Disabling
//     USB support") and leaves real readers to the system's pcscd. The
//     vpcd driver is copied into the temporary directory first.
//   - Readers: one reader.conf entry in a private -c directory, FRIENDLYNAME
//     "WSRC vpcd", DEVICENAME /dev/null:PORT. vpcd opens PORT and PORT+1
//     (two slots, readers "WSRC vpcd 00 00" and "WSRC vpcd 00 01"); PORT is
//     picked free at Start, and Start retries with other ports when pcscd's
//     log says vpcd could not bind. vpcd binds these ports on all
//     interfaces (its choice); the tests only connect over 127.0.0.1.
//
// libpcsclite reads PCSCLITE_CSOCK_NAME once per process and caches it, so
// this package sets it in init() to a per-process path: any test binary
// that imports pcscdtest talks only to the private daemon, even in tests
// that run before Start (they see SCARD_E_NO_SERVICE). One daemon runs at
// a time per process; Start waits for the previous one's cleanup.
//
// Requirements: pcscd, vpcd (Debian packages pcscd and vsmartcard-vpcd),
// unshare and mount (util-linux), and root or unprivileged user
// namespaces. When one is missing, Start skips the test with the reason,
// unless the environment has CI=true, where it fails it.
package pcscdtest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ReaderName is the FRIENDLYNAME of the vpcd reader.conf entry.
const ReaderName = "WSRC vpcd"

// Slots is the number of vpcd slots (readers) the daemon has.
const Slots = 2

// Candidate locations of the vpcd driver and pcscd's USB driver directory.
var (
	vpcdDrivers = []string{
		"/usr/lib/pcsc/drivers/serial/libifdvpcd.so",
		"/usr/local/lib/pcsc/drivers/serial/libifdvpcd.so",
	}
	usbDropDir = "/usr/lib/pcsc/drivers"
)

// startTimeout bounds how long pcscd may take to say "daemon ready";
// stopTimeout how long it may take to exit on SIGTERM before SIGKILL.
const (
	startTimeout = 30 * time.Second
	stopTimeout  = 10 * time.Second
)

// sockDir is this process's socket directory; PCSCLITE_CSOCK_NAME points
// into it.
var sockDir = filepath.Join(shortTempDir(), "wsrc-pcscd-"+strconv.Itoa(os.Getpid()))

func init() {
	os.Setenv("PCSCLITE_CSOCK_NAME", SocketPath())
}

// shortTempDir returns os.TempDir() unless a socket path in it would be
// longer than sun_path allows.
func shortTempDir() string {
	d := os.TempDir()
	if len(d) > 60 {
		return "/tmp"
	}
	return d
}

// SocketPath is the pcscd socket of this process's private daemon, the
// value of PCSCLITE_CSOCK_NAME.
func SocketPath() string { return filepath.Join(sockDir, "pcscd.comm") }

// active is held by the running daemon: one per process.
var active = make(chan struct{}, 1)

// Daemon is a private pcscd with two vpcd slots.
type Daemon struct {
	t       testing.TB
	dir     string // sockDir: socket, bind-mounted /run/pcscd
	confDir string // reader.conf.d
	driver  string // copy of libifdvpcd.so
	port    int    // first vpcd port

	mu sync.Mutex // guards the fields below
	// cmd and exited belong to the running pcscd, nil when stopped.
	cmd    *exec.Cmd
	exited chan struct{}
	log    *syncBuffer
}

// Start runs a private pcscd for the test and stops it at cleanup. It skips
// (or, under CI=true, fails) the test when pcscd, vpcd or namespaces are
// not available.
func Start(t testing.TB) *Daemon {
	t.Helper()
	if reason := missing(); reason != "" {
		unavailable(t, reason)
	}
	active <- struct{}{}
	d := &Daemon{t: t, dir: sockDir}
	t.Cleanup(func() {
		d.Stop()
		os.RemoveAll(d.dir)
		<-active
	})
	if err := d.prepare(); err != nil {
		t.Fatalf("pcscdtest: %v", err)
	}
	var err error
	for range 5 {
		if d.port, err = freePortPair(); err != nil {
			t.Fatalf("pcscdtest: %v", err)
		}
		if err = d.writeConf(); err != nil {
			t.Fatalf("pcscdtest: %v", err)
		}
		if err = d.start(); err == nil {
			return d
		}
		if !errors.Is(err, errPortBusy) {
			break
		}
	}
	unavailableErr(t, err, d)
	return nil
}

// unavailable skips the test, or fails it under CI.
func unavailable(t testing.TB, reason string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("pcscdtest: %s (CI=true, so this is a failure; install pcscd and vsmartcard-vpcd)", reason)
	}
	t.Skipf("pcscdtest: %s; skipping the real-stack test", reason)
}

// unavailableErr handles a failed start: a missing capability (namespaces)
// skips like a missing package, anything else fails.
func unavailableErr(t testing.TB, err error, d *Daemon) {
	t.Helper()
	if errors.Is(err, errNoNamespace) {
		unavailable(t, err.Error())
	}
	t.Fatalf("pcscdtest: %v\npcscd log:\n%s", err, d.Log())
}

// missing names the first requirement that is not met, "" if none.
func missing() string {
	if _, err := pcscdPath(); err != nil {
		return "pcscd not found (Debian package pcscd)"
	}
	if vpcdDriver() == "" {
		return "vpcd driver libifdvpcd.so not found (Debian package vsmartcard-vpcd)"
	}
	for _, tool := range []string{"unshare", "mount", "sh"} {
		if _, err := exec.LookPath(tool); err != nil {
			return tool + " not found (util-linux)"
		}
	}
	return ""
}

func pcscdPath() (string, error) {
	if p, err := exec.LookPath("pcscd"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/sbin/pcscd", "/usr/local/sbin/pcscd"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("pcscd not found")
}

func vpcdDriver() string {
	for _, p := range vpcdDrivers {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// prepare makes the private directories and copies the driver.
func (d *Daemon) prepare() error {
	if err := os.MkdirAll(d.dir, 0o755); err != nil {
		return err
	}
	d.confDir = filepath.Join(d.dir, "reader.conf.d")
	if err := os.MkdirAll(d.confDir, 0o755); err != nil {
		return err
	}
	src, err := os.ReadFile(vpcdDriver())
	if err != nil {
		return fmt.Errorf("reading vpcd driver: %w", err)
	}
	d.driver = filepath.Join(d.dir, "libifdvpcd.so")
	return os.WriteFile(d.driver, src, 0o755)
}

func (d *Daemon) writeConf() error {
	conf := fmt.Sprintf("FRIENDLYNAME \"%s\"\nDEVICENAME   /dev/null:%d\nLIBPATH      %s\nCHANNELID    %d\n",
		ReaderName, d.port, d.driver, d.port)
	return os.WriteFile(filepath.Join(d.confDir, "vpcd"), []byte(conf), 0o644)
}

// freePortPair returns a port P such that P and P+1 are free on loopback
// now. (vpcd binds them a moment later; a clash is seen in pcscd's log and
// Start tries again.)
func freePortPair() (int, error) {
	for range 50 {
		l1, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("finding a free port: %w", err)
		}
		p := l1.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp4", "127.0.0.1:"+strconv.Itoa(p+1))
		l1.Close()
		if err == nil {
			l2.Close()
			return p, nil
		}
	}
	return 0, errors.New("no pair of adjacent free ports found")
}

var (
	errPortBusy    = errors.New("vpcd could not bind its ports")
	errNoNamespace = errors.New("cannot make a private mount namespace for pcscd (need root or unprivileged user namespaces)")
)

// script runs inside the new mount namespace and becomes pcscd (same PID,
// which LISTEN_PID must name). Arguments: $1 socket directory, $2 USB
// driver directory to hide ("" if absent), $3 reader.conf.d, $4 pcscd.
const script = `set -e
mount -t tmpfs -o mode=0755 wsrc-pcscdtest /run || exit 97
mkdir -p /run/pcscd
mount --bind "$1" /run/pcscd
if [ -n "$2" ]; then mount -t tmpfs -o mode=0755 wsrc-pcscdtest "$2"; fi
export LISTEN_FDS=1 LISTEN_PID=$$
unset LISTEN_FDNAMES
exec "$4" --foreground --info -c "$3"
`

// start launches pcscd on a fresh listening socket and waits for "daemon
// ready" in its log.
func (d *Daemon) start() error {
	pcscd, err := pcscdPath()
	if err != nil {
		return err
	}
	sock := SocketPath()
	os.Remove(sock)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return fmt.Errorf("listening on %s: %w", sock, err)
	}
	l.SetUnlinkOnClose(false)
	f, err := l.File()
	l.Close()
	if err != nil {
		return fmt.Errorf("passing the socket: %w", err)
	}
	defer f.Close()
	os.Chmod(sock, 0o666)

	args := []string{"--mount", "--propagation", "private"}
	if os.Geteuid() != 0 {
		args = append([]string{"--user", "--map-root-user"}, args...)
	}
	hide := ""
	if st, err := os.Stat(usbDropDir); err == nil && st.IsDir() {
		hide = usbDropDir
	}
	args = append(args, "sh", "-c", script, "sh", d.dir, hide, d.confDir, pcscd)
	cmd := exec.Command("unshare", args...)
	cmd.ExtraFiles = []*os.File{f}
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	// pcscd must not outlive the test binary.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		pw.Close()
		pr.Close()
		return fmt.Errorf("starting pcscd: %w", err)
	}
	pw.Close()

	log := &syncBuffer{}
	ready := make(chan struct{})
	portBusy := make(chan struct{})
	exited := make(chan struct{})
	copied := make(chan struct{})
	go func() { // owns pr; exits at pcscd's EOF
		defer close(copied)
		defer pr.Close()
		s := bufio.NewScanner(pr)
		s.Buffer(make([]byte, 64*1024), 1024*1024)
		var r, b bool
		for s.Scan() {
			line := s.Text()
			log.WriteLine(line)
			if !r && strings.Contains(line, "daemon ready") {
				r = true
				close(ready)
			}
			if !b && strings.Contains(line, "Could not initialize connection to virtual ICC") {
				b = true
				close(portBusy)
			}
		}
		io.Copy(io.Discard, pr)
	}()
	go func() { // owns cmd.Wait; exits when pcscd does
		<-copied
		cmd.Wait()
		close(exited)
	}()
	d.mu.Lock()
	d.cmd, d.exited, d.log = cmd, exited, log
	d.mu.Unlock()

	timer := time.NewTimer(startTimeout)
	defer timer.Stop()
	select {
	case <-ready:
	case <-exited:
		d.Stop()
		if cmd.ProcessState != nil && cmd.ProcessState.ExitCode() == 97 || strings.Contains(log.String(), "unshare:") {
			return fmt.Errorf("%w: %s", errNoNamespace, strings.TrimSpace(log.String()))
		}
		return fmt.Errorf("pcscd exited before it was ready (%v)", cmd.ProcessState)
	case <-timer.C:
		d.Stop()
		return fmt.Errorf("pcscd not ready after %v", startTimeout)
	}
	select {
	case <-portBusy:
		d.Stop()
		return fmt.Errorf("%w (ports %d, %d)", errPortBusy, d.port, d.port+1)
	default:
	}
	return nil
}

// Stop stops pcscd (SIGTERM to its PID, SIGKILL after a grace period) and
// waits for it to exit. Clients then get SCARD_E_NO_SERVICE. Stop is a
// no-op when pcscd is not running.
func (d *Daemon) Stop() {
	d.mu.Lock()
	cmd, exited := d.cmd, d.exited
	d.cmd, d.exited = nil, nil
	d.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(stopTimeout)
	defer t.Stop()
	select {
	case <-exited:
	case <-t.C:
		cmd.Process.Kill()
		<-exited
	}
}

// Restart stops pcscd and starts it again with the same socket and vpcd
// ports. Cards inserted before are disconnected by the stop; reinsert them.
func (d *Daemon) Restart() {
	d.t.Helper()
	d.Stop()
	if err := d.start(); err != nil {
		d.t.Fatalf("pcscdtest: restarting pcscd: %v\npcscd log:\n%s", err, d.Log())
	}
}

// StartAgain starts a stopped daemon (after Stop) on the same socket and
// ports.
func (d *Daemon) StartAgain() {
	d.t.Helper()
	if err := d.start(); err != nil {
		d.t.Fatalf("pcscdtest: starting pcscd again: %v\npcscd log:\n%s", err, d.Log())
	}
}

// SlotAddr returns the vpcd address of slot i (0 or 1) on loopback.
func (d *Daemon) SlotAddr(i int) string {
	if i < 0 || i >= Slots {
		panic("pcscdtest: slot out of range")
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(d.port+i))
}

// Reader returns the PC/SC name of slot i's reader.
func (d *Daemon) Reader(i int) string {
	return fmt.Sprintf("%s 00 %02X", ReaderName, i)
}

// PID returns the running pcscd's process ID, 0 when stopped.
func (d *Daemon) PID() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd == nil {
		return 0
	}
	return d.cmd.Process.Pid
}

// Log returns what the current (or last) pcscd printed.
func (d *Daemon) Log() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.log == nil {
		return ""
	}
	return d.log.String()
}

// WaitLog waits until pcscd's log has a line containing s, or ctx is done.
func (d *Daemon) WaitLog(ctx context.Context, s string) error {
	d.mu.Lock()
	l := d.log
	d.mu.Unlock()
	if l == nil {
		return errors.New("pcscd not started")
	}
	return l.wait(ctx, s)
}

// syncBuffer collects log lines and wakes waiters on each.
type syncBuffer struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	wake chan struct{} // closed at the next line, nil when nobody waits
}

func (b *syncBuffer) WriteLine(s string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.WriteString(s)
	b.buf.WriteByte('\n')
	if b.wake != nil {
		close(b.wake)
		b.wake = nil
	}
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *syncBuffer) wait(ctx context.Context, s string) error {
	for {
		b.mu.Lock()
		if strings.Contains(b.buf.String(), s) {
			b.mu.Unlock()
			return nil
		}
		if b.wake == nil {
			b.wake = make(chan struct{})
		}
		w := b.wake
		b.mu.Unlock()
		select {
		case <-w:
		case <-ctx.Done():
			return fmt.Errorf("waiting for %q in the pcscd log: %w", s, ctx.Err())
		}
	}
}
