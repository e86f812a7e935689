package qemu

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wsrc-go/wsrc/internal/testenv/qemuvm"
	"github.com/wsrc-go/wsrc/internal/testenv/qemuvm/initramfs"
	"github.com/wsrc-go/wsrc/internal/testenv/qemuvm/vmscript"
	"github.com/wsrc-go/wsrc/internal/testenv/vmtest"
	"github.com/wsrc-go/wsrc/internal/testenv/vscard"
)

// vmTimeout bounds one VM from start to power-off, and each wait for it; a
// healthy one needs 3–10 s under TCG, up to about a minute on a machine
// loaded by other test packages.
const vmTimeout = 180 * time.Second

// usbModules are what the guest needs for the emulated readers (qemu-xhci).
var usbModules = []string{"xhci-pci"}

func TestMain(m *testing.M) { vmtest.Main(m, "wsrc-qemu-test-") }

// qemuArgsEnv adds arguments to every VM's QEMU command line, for
// profiling, e.g. "-trace usb_xhci_xfer_* -D /tmp/qemu-trace.log".
const qemuArgsEnv = "WSRC_VM_QEMU_ARGS"

// image describes a base initramfs: vminit as /init, the USB modules, and
// binaries installed as /bin/<name>.
type image struct {
	name     string
	binaries map[string]string // guest name -> host binary
	// extra, when set, adds more host files (a daemon, its plug-ins).
	extra func(*initramfs.Builder) error
}

var images struct {
	mu    sync.Mutex
	files map[string]string // image name -> initrd
}

// buildImage writes the base initramfs once per test process.
func buildImage(t *testing.T, p vmtest.Prereqs, img image) string {
	t.Helper()
	images.mu.Lock()
	defer images.mu.Unlock()
	if f, ok := images.files[img.name]; ok {
		return f
	}
	vminit := vmtest.GoBuild(t, "github.com/wsrc-go/wsrc/internal/testenv/qemuvm/vminit", false)
	start := time.Now()
	out := filepath.Join(vmtest.WorkDir(), img.name+".cpio")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := initramfs.New(f, false)
	must(t, b.CharDev("/dev/console", 0o600, 5, 1))
	must(t, b.Dir("/tmp", 0o777))
	must(t, b.CopyFile("/init", vminit))
	if _, err := b.AddModules(p.Kernel.Modules, p.Kernel.Release, usbModules...); err != nil {
		t.Fatal(err)
	}
	for name, bin := range img.binaries {
		must(t, b.AddExecutable("/bin/"+name, bin))
	}
	if img.extra != nil {
		must(t, img.extra(b))
	}
	must(t, b.Close())
	must(t, f.Close())
	if st, err := os.Stat(out); err == nil {
		t.Logf("initramfs %s: %d MB in %.1fs", img.name, st.Size()>>20, time.Since(start).Seconds())
	}
	if images.files == nil {
		images.files = map[string]string{}
	}
	images.files[img.name] = out
	return out
}

// reader is one emulated reader as the test drives it.
type reader struct {
	client *vscard.Client
	card   vscard.Card
	runErr chan error // Run's result
}

// testVM is a booted VM with its readers' cards served.
type testVM struct {
	vm      *qemuvm.VM
	readers []*reader
}

// boot starts a VM with one reader per card, runs script in it, and serves
// each card over VSCard, inserted from the start. Cleanup kills what is
// left and checks that the VSCard clients ended cleanly.
func boot(t *testing.T, p vmtest.Prereqs, initrd string, script string, cards ...vscard.Card) *testVM {
	t.Helper()
	return bootWith(t, p, initrd, script, nil, cards...)
}

// bootWith is boot with words added to the kernel command line.
func bootWith(t *testing.T, p vmtest.Prereqs, initrd string, script string, cmdline []string, cards ...vscard.Card) *testVM {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), vmTimeout)
	t.Cleanup(cancel)
	start := time.Now()
	vm, err := qemuvm.Start(ctx, qemuvm.Config{
		QEMU:    p.QEMU,
		Kernel:  p.Kernel.Image,
		Initrd:  initrd,
		Files:   map[string][]byte{"/vmscript": []byte(script)},
		Readers: len(cards),
		Append:  cmdline,
		Stderr:  vmtest.LogWriter{T: t, Prefix: "qemu: "},
		Args:    strings.Fields(os.Getenv(qemuArgsEnv)),
	})
	if err != nil {
		t.Fatal(err)
	}
	tv := &testVM{vm: vm}
	t.Cleanup(func() {
		vm.Close()
		for i, r := range tv.readers {
			if err := <-r.runErr; err != nil {
				t.Errorf("reader %d VSCard: %v", i, err)
			}
		}
		if t.Failed() {
			for _, l := range vm.Console().Lines() {
				t.Log("console| " + l)
			}
		}
		t.Logf("VM lived %.1fs, QEMU used %.1fs of CPU", time.Since(start).Seconds(), vm.CPUTime().Seconds())
	})
	for i, c := range cards {
		conn, err := vm.Reader(ctx, i)
		if err != nil {
			t.Fatalf("reader %d: %v", i, err)
		}
		r := &reader{client: vscard.NewClient(conn, vscard.Options{ReaderName: fmt.Sprintf("test reader %d", i)}), card: c, runErr: make(chan error, 1)}
		tv.readers = append(tv.readers, r)
		go func() { r.runErr <- r.client.Run(ctx) }()
		if err := r.client.Insert(ctx, c); err != nil {
			t.Fatalf("reader %d: %v", i, err)
		}
	}
	return tv
}

// exit waits for the process name and returns its output; it fails the
// test unless it exited 0.
func (tv *testVM) exit(t *testing.T, name string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), vmTimeout)
	defer cancel()
	code, out, err := tv.vm.Console().AwaitExit(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if code != "0" {
		t.Fatalf("%s exited %s:\n%s", name, code, strings.Join(out, "\n"))
	}
	return out
}

// mark waits for a mark.
func (tv *testVM) mark(t *testing.T, text string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), vmTimeout)
	defer cancel()
	if err := tv.vm.Console().AwaitMark(ctx, text); err != nil {
		t.Fatal(err)
	}
}

// done waits for the guest to power off after a complete script.
func (tv *testVM) done(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), vmTimeout)
	defer cancel()
	if err := tv.vm.Wait(ctx); err != nil {
		t.Fatalf("QEMU: %v", err)
	}
	for _, e := range tv.vm.Console().Events() {
		if e.Kind == vmscript.KindFail {
			t.Fatalf("guest script failed at line %s: %s", e.Name, e.Text)
		}
	}
	if _, err := tv.vm.Console().Await(ctx, func(e vmscript.Event) bool { return e.Kind == vmscript.KindDone }); err != nil {
		t.Fatalf("guest script did not finish: %v", err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
