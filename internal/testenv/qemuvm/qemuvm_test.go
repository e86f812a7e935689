package qemuvm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/wsrc-go/wsrc/internal/testenv/qemuvm/vmscript"
)

// fakeQEMUEnv makes the test binary act as qemu-system-x86_64: it connects
// every -chardev socket, says hello on it, prints what the test asks for
// on the console and exits (or hangs, to be killed).
const fakeQEMUEnv = "QEMUVM_FAKE_QEMU"

func TestMain(m *testing.M) {
	if mode := os.Getenv(fakeQEMUEnv); mode != "" {
		os.Exit(fakeQEMU(mode, os.Args[1:]))
	}
	goleak.VerifyTestMain(m)
}

func fakeQEMU(mode string, args []string) int {
	for i, a := range args {
		switch {
		case a == "-chardev":
			for _, kv := range strings.Split(args[i+1], ",") {
				if p, ok := strings.CutPrefix(kv, "path="); ok {
					c, err := net.Dial("unix", p)
					if err != nil {
						fmt.Println("dial:", err)
						return 1
					}
					c.Write([]byte("hello"))
					defer c.Close()
				}
			}
		case a == "-initrd":
			b, _ := os.ReadFile(args[i+1])
			fmt.Printf("booting %d\r\n", len(b))
			if bytes.Contains(b, []byte("vmscript\x00")) && bytes.Contains(b, []byte("run x true")) {
				fmt.Println(vmscript.Line(vmscript.KindLog, "", "script found"))
			}
		case a == "-append":
			fmt.Println("cmdline:", args[i+1])
		case a == "-fake-echo":
			fmt.Println("echo:", args[i+1])
		}
	}
	fmt.Println(vmscript.Line(vmscript.KindOut, "x", "line one"))
	fmt.Print("kernel noise " + vmscript.Line(vmscript.KindExit, "x", "0") + "\n")
	switch mode {
	case "hang":
		fmt.Println(vmscript.Line(vmscript.KindMark, "", "hanging"))
		select {}
	case "fail":
		fmt.Println(vmscript.Line(vmscript.KindFail, "3", "until list: timed out"))
	}
	fmt.Println(vmscript.Line(vmscript.KindDone, "", ""))
	return 0
}

func startFake(t *testing.T, ctx context.Context, mode string, readers int) *VM {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(fakeQEMUEnv, mode)
	base := filepath.Join(t.TempDir(), "base.cpio")
	os.WriteFile(base, []byte("070701base"), 0o644)
	vm, err := Start(ctx, Config{
		QEMU: exe, Kernel: "vmlinux", Initrd: base, Readers: readers, Accel: "tcg",
		Files:  map[string][]byte{"/vmscript": []byte("run x true\n")},
		Append: []string{"wsrc.test=1"},
		Args:   []string{"-fake-echo", "extra args"},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Close() })
	return vm
}

func TestFakeVM(t *testing.T) {
	ctx := context.Background()
	vm := startFake(t, ctx, "ok", 2)
	for i := range 2 {
		c, err := vm.Reader(ctx, i)
		if err != nil {
			t.Fatalf("reader %d: %v", i, err)
		}
		b, _ := io.ReadAll(c)
		c.Close()
		if string(b) != "hello" {
			t.Fatalf("reader %d got %q", i, b)
		}
	}
	if _, err := vm.Reader(ctx, 2); err == nil {
		t.Fatal("reader 2 of 2 exists")
	}
	exit, out, err := vm.Console().AwaitExit(ctx, "x")
	if err != nil || exit != "0" || len(out) != 1 || out[0] != "line one" {
		t.Fatalf("AwaitExit = %q %q %v", exit, out, err)
	}
	if l, err := vm.Console().AwaitOutput(ctx, "x", func(l string) bool { return strings.HasPrefix(l, "line") }); err != nil || l != "line one" {
		t.Fatalf("AwaitOutput = %q, %v", l, err)
	}
	if err := vm.Wait(ctx); err != nil {
		t.Fatalf("Wait: %v", err)
	}
	if vm.CPUTime() <= 0 {
		t.Error("no CPU time after exit")
	}
	lines := strings.Join(vm.Console().Lines(), "\n")
	for _, want := range []string{"@@vm log script found", "cmdline: console=ttyS0 panic=-1 quiet wsrc.test=1", "echo: extra args"} {
		if !strings.Contains(lines, want) {
			t.Errorf("console lacks %q:\n%s", want, lines)
		}
	}
	if strings.Contains(lines, "\r") {
		t.Error("carriage returns left in console lines")
	}
	if err := vm.Console().AwaitMark(ctx, "never"); !errors.Is(err, ErrExited) {
		t.Fatalf("AwaitMark after exit: %v", err)
	}
	dir := vm.dir
	vm.Close()
	vm.Close()
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("temp dir left behind: %v", err)
	}
}

func TestFakeVMScriptFails(t *testing.T) {
	ctx := context.Background()
	vm := startFake(t, ctx, "fail", 0)
	err := vm.Console().AwaitMark(ctx, "never")
	if err == nil || !strings.Contains(err.Error(), "line 3: until list: timed out") {
		t.Fatalf("AwaitMark after a failed step: %v", err)
	}
}

func TestFakeVMKilled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	vm := startFake(t, ctx, "hang", 1)
	if err := vm.Console().AwaitMark(ctx, "hanging"); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer wcancel()
	if err := vm.Wait(wctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait on a hanging VM: %v", err)
	}
	cancel()
	if _, err := vm.Reader(context.Background(), 0); err != nil && !errors.Is(err, ErrExited) {
		t.Fatalf("Reader: %v", err)
	}
}

func TestFakeVMContextKills(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	vm := startFake(t, ctx, "hang", 0)
	if err := vm.Console().AwaitMark(context.Background(), "hanging"); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := vm.Wait(context.Background()); err == nil {
		t.Fatal("a killed QEMU exited cleanly")
	}
}

func TestStartErrors(t *testing.T) {
	if _, err := Start(context.Background(), Config{QEMU: "/nonexistent/qemu"}); err == nil {
		t.Fatal("Start with a missing QEMU: no error")
	}
	if _, err := Start(context.Background(), Config{QEMU: "/bin/true", Files: map[string][]byte{"x": nil}, Initrd: "/nonexistent"}); err == nil {
		t.Fatal("Start with a missing initrd: no error")
	}
}

func TestFindKernel(t *testing.T) {
	cache := t.TempDir()
	if _, err := FindKernel(cache); !errors.Is(err, ErrNoKernel) {
		t.Fatalf("empty cache: %v", err)
	}
	for _, rel := range []string{"6.1.0-1-amd64", "6.1.0-2-amd64", "6.1.0-3-amd64"} {
		d := filepath.Join(cache, "kernel", rel)
		os.MkdirAll(filepath.Join(d, "lib", "modules", rel), 0o755)
		os.WriteFile(filepath.Join(d, "vmlinuz"), nil, 0o644)
		if rel != "6.1.0-3-amd64" { // incomplete: no marker
			os.WriteFile(filepath.Join(d, ".complete"), nil, 0o644)
		}
	}
	os.WriteFile(filepath.Join(cache, "kernel", "6.1.0-1-amd64", "vmlinux"), nil, 0o644)
	k, err := FindKernel(cache)
	if err != nil || k.Release != "6.1.0-2-amd64" || filepath.Base(k.Image) != "vmlinuz" {
		t.Fatalf("FindKernel = %+v, %v", k, err)
	}
	os.RemoveAll(filepath.Join(cache, "kernel", "6.1.0-2-amd64"))
	k, err = FindKernel(cache)
	if err != nil || k.Release != "6.1.0-1-amd64" || filepath.Base(k.Image) != "vmlinux" {
		t.Fatalf("FindKernel = %+v, %v", k, err)
	}
	t.Setenv(KernelDirEnv, cache)
	if d, err := CacheDir(); err != nil || d != cache {
		t.Fatalf("CacheDir = %q, %v", d, err)
	}
}

func TestAccel(t *testing.T) {
	a := Accel()
	if a != "tcg" && a != "kvm" {
		t.Fatalf("Accel() = %q", a)
	}
}
