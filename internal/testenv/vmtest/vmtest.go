// Package vmtest is what the VM test suites (test/qemu, test/gadget) share
// around package qemuvm: the test binary's work directory, the
// prerequisites check (QEMU, the guest kernel — fetched under CI — and
// the host's pcscd + libccid), building guest programs, and copying
// pcscd + libccid into an initramfs.
//
// A suite's TestMain calls Main; its tests call Need (and NeedPCSCD),
// then GoBuild for each program the guest runs.
package vmtest

import (
	"errors"
	"fmt"
	"go/build"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/wsrc-go/wsrc/internal/testenv/qemuvm"
	"github.com/wsrc-go/wsrc/internal/testenv/qemuvm/initramfs"
)

// FetchEnv set to 1 lets Need fetch a missing kernel, as it does under
// CI=true.
const FetchEnv = "WSRC_QEMU_FETCH"

// workDir is the test binary's build directory, made and removed by Main.
var workDir string

// Main runs the suite's tests in a fresh work directory (removed after)
// and exits: non-zero when a test failed or a goroutine leaked. The
// directory's name starts with prefix.
func Main(m *testing.M, prefix string) {
	d, err := os.MkdirTemp("", prefix)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	workDir = d
	code := func() int {
		defer os.RemoveAll(d)
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		code := m.Run()
		if code == 0 {
			if err := goleak.Find(); err != nil {
				fmt.Fprintln(os.Stderr, "goroutine leak:", err)
				return 1
			}
		}
		return code
	}()
	os.Exit(code)
}

// WorkDir is the directory Main made for this test process.
func WorkDir() string {
	if workDir == "" {
		panic("vmtest: WorkDir outside vmtest.Main")
	}
	return workDir
}

// Prereqs are the host things every VM test needs.
type Prereqs struct {
	QEMU   string        // qemu-system-x86_64
	Kernel qemuvm.Kernel // the guest kernel and its modules
}

// missing skips t with the reason, or fails it under CI=true, where
// nothing may be missing.
func missing(t *testing.T, err error) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("prerequisite missing under CI: %v", err)
	}
	t.Skipf("skipping: %v", err)
}

// Need returns the prerequisites or skips the test with the reason
// (-short skips too); under CI=true a missing prerequisite fails it
// instead. A missing kernel is fetched first under CI=true or FetchEnv=1.
func Need(t *testing.T) Prereqs {
	t.Helper()
	if testing.Short() {
		t.Skip("boots QEMU; skipped with -short")
	}
	var p Prereqs
	var err error
	if p.QEMU, err = qemuvm.FindQEMU(); err != nil {
		missing(t, err)
	}
	cache, err := qemuvm.CacheDir()
	if err != nil {
		missing(t, err)
	}
	if p.Kernel, err = qemuvm.FindKernel(cache); err != nil && (os.Getenv("CI") == "true" || os.Getenv(FetchEnv) == "1") {
		// A fresh clone under CI: fetch the kernel as developers do.
		if ferr := fetchKernel(t, cache); ferr != nil {
			missing(t, fmt.Errorf("%w; fetching it: %v", err, ferr))
		}
		p.Kernel, err = qemuvm.FindKernel(cache)
	}
	if err != nil {
		missing(t, err)
	}
	return p
}

var fetched struct {
	once sync.Once
	err  error
}

// fetchKernel runs scripts/fetch-kernel.sh once per test process.
func fetchKernel(t *testing.T, cache string) error {
	fetched.once.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			fetched.err = err
			return
		}
		start := time.Now()
		out, err := exec.Command(filepath.Join(root, "scripts", "fetch-kernel.sh"), cache).CombinedOutput()
		if err != nil {
			fetched.err = fmt.Errorf("scripts/fetch-kernel.sh: %v\n%s", err, out)
			return
		}
		t.Logf("fetched the kernel in %.1fs: %s", time.Since(start).Seconds(), strings.TrimSpace(string(out)))
	})
	return fetched.err
}

// moduleRoot is the directory above the working directory (a test's
// package directory) that holds go.mod.
func moduleRoot() (string, error) {
	d, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		up := filepath.Dir(d)
		if up == d {
			return "", errors.New("vmtest: no go.mod above the working directory")
		}
		d = up
	}
}

// builds caches the binaries built by this test process.
var builds struct {
	mu   sync.Mutex
	outs map[string]string // package -> binary
}

// GoBuild builds pkg (an import path under the module) into the work
// directory once per test process and returns the binary; static unless
// cgo.
func GoBuild(t *testing.T, pkg string, cgo bool) string {
	t.Helper()
	builds.mu.Lock()
	defer builds.mu.Unlock()
	if out, ok := builds.outs[pkg]; ok {
		return out
	}
	out := filepath.Join(WorkDir(), "bin", filepath.Base(pkg))
	// The go that runs the tests, even when it is not on PATH.
	gobin := filepath.Join(build.Default.GOROOT, "bin", "go")
	if _, err := os.Stat(gobin); err != nil {
		gobin = "go"
	}
	start := time.Now()
	defer func() { t.Logf("built %s in %.1fs", filepath.Base(pkg), time.Since(start).Seconds()) }()
	cmd := exec.Command(gobin, "build", "-trimpath", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED="+map[bool]string{true: "1", false: "0"}[cgo])
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building %s: %v\n%s", pkg, err, b)
	}
	if builds.outs == nil {
		builds.outs = map[string]string{}
	}
	builds.outs[pkg] = out
	return out
}

// The host's pcscd and libccid (Debian packages pcscd and libccid),
// copied into the guest with their shared libraries.
const (
	PCSCD         = "/usr/sbin/pcscd"
	CCIDBundle    = "/usr/lib/pcsc/drivers/ifd-ccid.bundle"
	CCIDLib       = CCIDBundle + "/Contents/Linux/libccid.so"
	CCIDInfoPlist = CCIDBundle + "/Contents/Info.plist"
)

// NeedPCSCD skips the test (fails it under CI=true) when the host lacks
// pcscd or libccid.
func NeedPCSCD(t *testing.T) {
	t.Helper()
	for _, f := range []string{PCSCD, CCIDLib, CCIDInfoPlist} {
		if _, err := os.Stat(f); err != nil {
			missing(t, fmt.Errorf("%w (Debian packages pcscd, libccid; make deps-test)", err))
		}
	}
}

// AddPCSCD puts pcscd and the libccid bundle into the image, with their
// shared libraries. Info.plist is a symbolic link to /etc on Debian; the
// guest gets the file itself. /run is where pcscd makes its socket.
func AddPCSCD(b *initramfs.Builder) error {
	if err := b.AddExecutable(PCSCD, PCSCD); err != nil {
		return err
	}
	if err := b.AddExecutable(CCIDLib, CCIDLib); err != nil {
		return err
	}
	// glibc loads libgcc_s when a thread exits (pthread_exit, used by
	// pcscd's client threads); nothing names it in DT_NEEDED.
	gcc, err := hostLib("libgcc_s.so.1")
	if err != nil {
		return err
	}
	if err := b.AddExecutable(gcc, gcc); err != nil {
		return err
	}
	plist, err := filepath.EvalSymlinks(CCIDInfoPlist)
	if err != nil {
		return err
	}
	if err := b.CopyFile(CCIDInfoPlist, plist); err != nil {
		return err
	}
	return b.Dir("/run", 0o755)
}

// hostLib finds a shared library in the host's x86-64 library directories.
func hostLib(name string) (string, error) {
	for _, d := range []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64"} {
		p := filepath.Join(d, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found on the host", name)
}

// LogWriter writes what it is given (QEMU's stderr) to the test log,
// line by line after Prefix.
type LogWriter struct {
	T      *testing.T
	Prefix string
}

func (w LogWriter) Write(p []byte) (int, error) {
	w.T.Log(w.Prefix + strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
