package initramfs

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// entry is one member of a newc archive as a test reads it back.
type entry struct {
	name         string
	mode         uint32
	major, minor uint32
	data         string
}

// readCPIO parses a newc archive up to its trailer.
func readCPIO(t *testing.T, b []byte) []entry {
	t.Helper()
	var out []entry
	off := 0
	field := func(i int) uint32 {
		v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
		if err != nil {
			t.Fatalf("header field %d at %d: %v", i, off, err)
		}
		return uint32(v)
	}
	align := func(n int) int { return (n + 3) &^ 3 }
	for {
		if off+110 > len(b) || string(b[off:off+6]) != "070701" {
			t.Fatalf("no header at %d", off)
		}
		mode, size, namesize := field(1), int(field(6)), int(field(11))
		e := entry{mode: mode, major: field(9), minor: field(10)}
		e.name = string(b[off+110 : off+110+namesize-1])
		off = align(off + 110 + namesize)
		e.data = string(b[off : off+size])
		off = align(off + size)
		if e.name == "TRAILER!!!" {
			if off != len(b) {
				t.Fatalf("%d bytes after the trailer", len(b)-off)
			}
			return out
		}
		out = append(out, e)
	}
}

func TestArchive(t *testing.T) {
	for _, gz := range []bool{false, true} {
		var buf bytes.Buffer
		b := New(&buf, gz)
		must(t, b.CharDev("/dev/console", 0o600, 5, 1))
		must(t, b.File("/etc/wsrc/script", 0o644, []byte("hello")))
		must(t, b.File("etc/wsrc/script", 0o644, []byte("second copy is dropped")))
		must(t, b.Symlink("/lib64/ld.so", "../lib/ld.so.2"))
		must(t, b.Dir("tmp", 0o1777))
		must(t, b.Close())
		raw := buf.Bytes()
		if gz {
			zr, err := gzip.NewReader(&buf)
			must(t, err)
			raw, err = io.ReadAll(zr)
			must(t, err)
		}
		got := readCPIO(t, raw)
		want := []entry{
			{name: "dev", mode: modeDir | 0o755},
			{name: "dev/console", mode: modeChar | 0o600, major: 5, minor: 1},
			{name: "etc", mode: modeDir | 0o755},
			{name: "etc/wsrc", mode: modeDir | 0o755},
			{name: "etc/wsrc/script", mode: modeFile | 0o644, data: "hello"},
			{name: "lib64", mode: modeDir | 0o755},
			{name: "lib64/ld.so", mode: modeSymlink | 0o777, data: "../lib/ld.so.2"},
			{name: "tmp", mode: modeDir | 0o777},
		}
		if !slices.Equal(got, want) {
			t.Fatalf("gzip=%v: archive\n%+v\nwant\n%+v", gz, got, want)
		}
	}
}

func TestBadPaths(t *testing.T) {
	b := New(io.Discard, false)
	for _, p := range []string{"/", "", "..", "../etc/passwd", "/../x"} {
		if err := b.File(p, 0o644, nil); err == nil {
			t.Errorf("File(%q): no error", p)
		}
	}
	if err := b.CopyFile("x", "/nonexistent/file"); err == nil {
		t.Error("CopyFile of a missing file: no error")
	}
	if err := b.CopyFile("x", t.TempDir()); err == nil {
		t.Error("CopyFile of a directory: no error")
	}
	must(t, b.Close())
	if err := b.File("late", 0o644, nil); err == nil {
		t.Error("File after Close: no error")
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestWriteErrorSticks(t *testing.T) {
	b := New(failWriter{}, false)
	if err := b.File("a", 0o644, []byte("x")); err == nil {
		t.Fatal("no error from a failing writer")
	}
	if err := b.Close(); err == nil {
		t.Fatal("Close after a write error: no error")
	}
}

func TestAddModules(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"modules.dep":            "kernel/a/usbcore.ko: kernel/a/usb-common.ko\nkernel/a/usb-common.ko:\nkernel/b/other.ko:\n",
		"kernel/a/usbcore.ko":    "core",
		"kernel/a/usb-common.ko": "common",
		"kernel/b/other.ko":      "other",
	}
	for name, data := range files {
		must(t, os.MkdirAll(filepath.Join(dir, filepath.Dir(name)), 0o755))
		must(t, os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644))
	}
	var buf bytes.Buffer
	b := New(&buf, false)
	order, err := b.AddModules(dir, "6.1.0-test", "usbcore")
	must(t, err)
	must(t, b.Close())
	if want := []string{"kernel/a/usb-common.ko", "kernel/a/usbcore.ko"}; !slices.Equal(order, want) {
		t.Fatalf("order %v, want %v", order, want)
	}
	got := map[string]string{}
	for _, e := range readCPIO(t, buf.Bytes()) {
		got[e.name] = e.data
	}
	if got["lib/modules/6.1.0-test/kernel/a/usbcore.ko"] != "core" || got["lib/modules/6.1.0-test/kernel/a/usb-common.ko"] != "common" {
		t.Fatalf("modules missing: %v", got)
	}
	if _, ok := got["lib/modules/6.1.0-test/kernel/b/other.ko"]; ok {
		t.Fatal("unrequested module added")
	}
	if dep := got["lib/modules/6.1.0-test/modules.dep"]; dep != "kernel/a/usb-common.ko:\nkernel/a/usbcore.ko: kernel/a/usb-common.ko\n" {
		t.Fatalf("modules.dep = %q", dep)
	}
	if _, err := New(io.Discard, false).AddModules(dir, "x", "nope"); err == nil {
		t.Fatal("unknown module: no error")
	}
}

func TestSharedLibs(t *testing.T) {
	exe := "/bin/true"
	if _, err := os.Stat(exe); err != nil {
		t.Skip("no /bin/true")
	}
	libs, err := SharedLibs(exe)
	must(t, err)
	if len(libs) < 2 || !strings.Contains(libs[0], "ld-linux") {
		t.Fatalf("SharedLibs(%s) = %v, want the loader then libc", exe, libs)
	}
	if !slices.ContainsFunc(libs, func(l string) bool { return strings.HasSuffix(l, "/libc.so.6") }) {
		t.Fatalf("no libc in %v", libs)
	}

	var buf bytes.Buffer
	b := New(&buf, false)
	must(t, b.AddExecutable("/bin/true", exe))
	must(t, b.Close())
	names := map[string]bool{}
	for _, e := range readCPIO(t, buf.Bytes()) {
		names["/"+e.name] = true
	}
	for _, l := range libs {
		if !names[l] {
			t.Errorf("%s missing from the archive", l)
		}
	}

	if _, err := SharedLibs(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("SharedLibs of a missing file: no error")
	}
	notELF := filepath.Join(t.TempDir(), "script")
	must(t, os.WriteFile(notELF, []byte("#!/bin/sh\n"), 0o755))
	if _, err := SharedLibs(notELF); err == nil {
		t.Fatal("SharedLibs of a script: no error")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
