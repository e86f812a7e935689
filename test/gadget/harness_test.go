package gadget

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/wsrc-go/wsrc/internal/testenv/qemuvm"
	"github.com/wsrc-go/wsrc/internal/testenv/qemuvm/initramfs"
	"github.com/wsrc-go/wsrc/internal/testenv/qemuvm/vmscript"
	"github.com/wsrc-go/wsrc/internal/testenv/vmtest"
)

// vmTimeout bounds the lab VM from start to power-off.
const vmTimeout = 12 * time.Minute

// gadgetModules make the guest its own USB device: dummy_hcd (host and
// device controller in one) and GadgetFS; usbcore and udc-core come as
// their dependencies.
var gadgetModules = []string{"dummy_hcd", "gadgetfs"}

func TestMain(m *testing.M) { vmtest.Main(m, "wsrc-gadget-test-") }

// need returns the prerequisites (with the host's pcscd and libccid) or
// skips the test with the reason; under CI=true it fails it instead.
func need(t *testing.T) vmtest.Prereqs {
	t.Helper()
	p := vmtest.Need(t)
	vmtest.NeedPCSCD(t)
	return p
}

// buildImage writes the lab's initramfs: vminit as /init, the gadget
// modules, the guest programs, pcscd and libccid.
func buildImage(t *testing.T, p vmtest.Prereqs) string {
	t.Helper()
	bins := map[string]string{
		"ccidgadget":  vmtest.GoBuild(t, "github.com/wsrc-go/wsrc/test/gadget/guest/ccidgadget", false),
		"oracle":      vmtest.GoBuild(t, "github.com/wsrc-go/wsrc/test/gadget/guest/oracle", true),
		"labbench":    vmtest.GoBuild(t, "github.com/wsrc-go/wsrc/test/gadget/guest/labbench", true),
		"wsrc-server": vmtest.GoBuild(t, "github.com/wsrc-go/wsrc/cmd/wsrc-server", false),
		"wsrc-agent":  vmtest.GoBuild(t, "github.com/wsrc-go/wsrc/cmd/wsrc-agent", true),
		"wsrc":        vmtest.GoBuild(t, "github.com/wsrc-go/wsrc/cmd/wsrc", false),
	}
	vminit := vmtest.GoBuild(t, "github.com/wsrc-go/wsrc/internal/testenv/qemuvm/vminit", false)
	out := filepath.Join(vmtest.WorkDir(), "lab.cpio")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := initramfs.New(f, false)
	must(t, b.CharDev("/dev/console", 0o600, 5, 1))
	must(t, b.Dir("/tmp", 0o777))
	must(t, b.CopyFile("/init", vminit))
	if _, err := b.AddModules(p.Kernel.Modules, p.Kernel.Release, gadgetModules...); err != nil {
		t.Fatal(err)
	}
	for name, bin := range bins {
		must(t, b.AddExecutable("/bin/"+name, bin))
	}
	must(t, vmtest.AddPCSCD(b))
	must(t, b.Close())
	must(t, f.Close())
	return out
}

// runVM boots the image with script and returns the console once the
// guest has powered off.
func runVM(t *testing.T, p vmtest.Prereqs, initrd, script string) *qemuvm.Console {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), vmTimeout)
	defer cancel()
	start := time.Now()
	vm, err := qemuvm.Start(ctx, qemuvm.Config{
		QEMU:   p.QEMU,
		Kernel: p.Kernel.Image,
		Initrd: initrd,
		Files:  map[string][]byte{"/vmscript": []byte(script)},
		Append: []string{"tsc=reliable"},
		Stderr: vmtest.LogWriter{T: t, Prefix: "qemu: "},
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

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
