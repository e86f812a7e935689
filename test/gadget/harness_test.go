package gadget

import (
	"context"
	"fmt"
	"go/build"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/wsrc-go/wsrc/internal/testenv/qemuvm"
	"github.com/wsrc-go/wsrc/internal/testenv/qemuvm/initramfs"
	"github.com/wsrc-go/wsrc/internal/testenv/qemuvm/vmscript"
)

// The VM helpers below follow test/qemu's (harness_test.go, bench_test.go);
// they are copied, not shared, because test packages cannot import each
// other. A common internal package is left to the planned restructuring.

// vmTimeout bounds the lab VM from start to power-off.
const vmTimeout = 12 * time.Minute

// gadgetModules make the guest its own USB device: dummy_hcd (host and
// device controller in one) and GadgetFS; usbcore and udc-core come as
// their dependencies.
var gadgetModules = []string{"dummy_hcd", "gadgetfs"}

// The host's pcscd and libccid (Debian packages pcscd, libccid), copied
// into the guest with their shared libraries.
const (
	hostPCSCD     = "/usr/sbin/pcscd"
	ccidBundle    = "/usr/lib/pcsc/drivers/ifd-ccid.bundle"
	ccidLib       = ccidBundle + "/Contents/Linux/libccid.so"
	ccidInfoPlist = ccidBundle + "/Contents/Info.plist"
)

var workDir string // the test binary's build directory, removed by TestMain

func TestMain(m *testing.M) {
	d, err := os.MkdirTemp("", "wsrc-gadget-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	workDir = d
	code := 0
	func() {
		defer os.RemoveAll(d)
		code = m.Run()
		if code == 0 {
			if err := goleak.Find(); err != nil {
				fmt.Fprintln(os.Stderr, "goroutine leak:", err)
				code = 1
			}
		}
	}()
	os.Exit(code)
}

// prereqs are the host things the lab needs.
type prereqs struct {
	qemu   string
	kernel qemuvm.Kernel
}

// need returns the prerequisites or skips the test with the reason;
// under CI=true a missing prerequisite fails it instead.
func need(t *testing.T) prereqs {
	t.Helper()
	if testing.Short() {
		t.Skip("boots a QEMU VM; skipped with -short")
	}
	missing := func(err error) {
		t.Helper()
		if os.Getenv("CI") == "true" {
			t.Fatalf("prerequisite missing under CI: %v", err)
		}
		t.Skipf("skipping: %v", err)
	}
	for _, f := range []string{hostPCSCD, ccidLib, ccidInfoPlist} {
		if _, err := os.Stat(f); err != nil {
			missing(fmt.Errorf("%w (Debian packages pcscd, libccid; make deps-test)", err))
		}
	}
	var p prereqs
	var err error
	if p.qemu, err = qemuvm.FindQEMU(); err != nil {
		missing(err)
	}
	cache, err := qemuvm.CacheDir()
	if err != nil {
		missing(err)
	}
	if p.kernel, err = qemuvm.FindKernel(cache); err != nil && (os.Getenv("CI") == "true" || os.Getenv("WSRC_QEMU_FETCH") == "1") {
		// A fresh clone under CI: fetch the kernel as developers do.
		out, ferr := exec.Command("../../scripts/fetch-kernel.sh", cache).CombinedOutput()
		if ferr != nil {
			missing(fmt.Errorf("%w; fetching it: %v\n%s", err, ferr, out))
		}
		p.kernel, err = qemuvm.FindKernel(cache)
	}
	if err != nil {
		missing(err)
	}
	return p
}

// goBuild builds pkg into workDir; static unless cgo.
func goBuild(t *testing.T, pkg string, cgo bool) string {
	t.Helper()
	out := filepath.Join(workDir, "bin", filepath.Base(pkg))
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
	return out
}

// buildImage writes the lab's initramfs: vminit as /init, the gadget
// modules, the guest programs, pcscd and libccid.
func buildImage(t *testing.T, p prereqs) string {
	t.Helper()
	bins := map[string]string{
		"ccidgadget":  goBuild(t, "github.com/wsrc-go/wsrc/test/gadget/guest/ccidgadget", false),
		"oracle":      goBuild(t, "github.com/wsrc-go/wsrc/test/gadget/guest/oracle", true),
		"labbench":    goBuild(t, "github.com/wsrc-go/wsrc/test/gadget/guest/labbench", true),
		"wsrc-server": goBuild(t, "github.com/wsrc-go/wsrc/cmd/wsrc-server", false),
		"wsrc-agent":  goBuild(t, "github.com/wsrc-go/wsrc/cmd/wsrc-agent", true),
		"wsrc":        goBuild(t, "github.com/wsrc-go/wsrc/cmd/wsrc", false),
	}
	vminit := goBuild(t, "github.com/wsrc-go/wsrc/internal/testenv/qemuvm/vminit", false)
	out := filepath.Join(workDir, "lab.cpio")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := initramfs.New(f, false)
	must(t, b.CharDev("/dev/console", 0o600, 5, 1))
	must(t, b.Dir("/tmp", 0o777))
	must(t, b.CopyFile("/init", vminit))
	if _, err := b.AddModules(p.kernel.Modules, p.kernel.Release, gadgetModules...); err != nil {
		t.Fatal(err)
	}
	for name, bin := range bins {
		must(t, b.AddExecutable("/bin/"+name, bin))
	}
	must(t, addPCSCD(b))
	must(t, b.Close())
	must(t, f.Close())
	return out
}

// addPCSCD puts pcscd and the libccid bundle into the image, with their
// shared libraries (as test/qemu does).
func addPCSCD(b *initramfs.Builder) error {
	if err := b.AddExecutable(hostPCSCD, hostPCSCD); err != nil {
		return err
	}
	if err := b.AddExecutable(ccidLib, ccidLib); err != nil {
		return err
	}
	// glibc loads libgcc_s when a thread exits; nothing names it.
	for _, d := range []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"} {
		if p := filepath.Join(d, "libgcc_s.so.1"); fileExists(p) {
			if err := b.AddExecutable(p, p); err != nil {
				return err
			}
			break
		}
	}
	plist, err := filepath.EvalSymlinks(ccidInfoPlist)
	if err != nil {
		return err
	}
	if err := b.CopyFile(ccidInfoPlist, plist); err != nil {
		return err
	}
	return b.Dir("/run", 0o755)
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// runVM boots the image with script and returns the console once the
// guest has powered off.
func runVM(t *testing.T, p prereqs, initrd, script string) *qemuvm.Console {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), vmTimeout)
	defer cancel()
	start := time.Now()
	vm, err := qemuvm.Start(ctx, qemuvm.Config{
		QEMU:   p.qemu,
		Kernel: p.kernel.Image,
		Initrd: initrd,
		Files:  map[string][]byte{"/vmscript": []byte(script)},
		Append: []string{"tsc=reliable"},
		Stderr: testWriter{t},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	werr := vm.Wait(ctx)
	t.Logf("lab VM lived %.1fs, QEMU used %.1fs of CPU", time.Since(start).Seconds(), vm.CPUTime().Seconds())
	con := vm.Console()
	if werr != nil {
		dump(t, con)
		t.Fatalf("QEMU: %v", werr)
	}
	for _, e := range con.Events() {
		if e.Kind == vmscript.KindFail {
			// The steps after it did not run: their tests fail for
			// want of output, the others still report. (Logged, not
			// failed here: this test only happened to boot the VM.)
			t.Logf("guest script failed at line %s: %s", e.Name, e.Text)
		}
	}
	return con
}

func dump(t *testing.T, con *qemuvm.Console) {
	t.Helper()
	for _, l := range con.Lines() {
		t.Log("console| " + l)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log("qemu: " + strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
