package kmod

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
)

const usbDep = `kernel/drivers/usb/host/xhci-pci.ko: kernel/drivers/usb/host/xhci-hcd.ko kernel/drivers/usb/core/usbcore.ko kernel/drivers/usb/common/usb-common.ko
kernel/drivers/usb/host/xhci-hcd.ko: kernel/drivers/usb/core/usbcore.ko kernel/drivers/usb/common/usb-common.ko
kernel/drivers/usb/core/usbcore.ko: kernel/drivers/usb/common/usb-common.ko
kernel/drivers/usb/common/usb-common.ko:

kernel/drivers/usb/host/uhci-hcd.ko: kernel/drivers/usb/core/usbcore.ko kernel/drivers/usb/common/usb-common.ko
`

var usbOrder = []string{
	"kernel/drivers/usb/common/usb-common.ko",
	"kernel/drivers/usb/core/usbcore.ko",
	"kernel/drivers/usb/host/xhci-hcd.ko",
	"kernel/drivers/usb/host/xhci-pci.ko",
}

func TestResolve(t *testing.T) {
	ix, err := ParseDep(strings.NewReader(usbDep))
	if err != nil {
		t.Fatal(err)
	}
	if err := ix.SetBuiltin(strings.NewReader("kernel/drivers/base/firmware_class.ko\n")); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		names []string
		want  []string
		err   error
	}{
		{[]string{"xhci-pci"}, usbOrder, nil},
		{[]string{"xhci_pci", "usbcore"}, usbOrder, nil},
		{[]string{"usbcore", "xhci-pci.ko"}, []string{usbOrder[0], usbOrder[1], usbOrder[2], usbOrder[3]}, nil},
		{[]string{"uhci-hcd", "xhci-pci"}, []string{usbOrder[0], usbOrder[1], "kernel/drivers/usb/host/uhci-hcd.ko", usbOrder[2], usbOrder[3]}, nil},
		{[]string{"firmware-class"}, nil, nil},
		{[]string{"ehci-pci"}, nil, ErrNotFound},
	} {
		got, err := ix.Resolve(tt.names...)
		if !errors.Is(err, tt.err) {
			t.Fatalf("Resolve(%v) err = %v, want %v", tt.names, err, tt.err)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("Resolve(%v) = %v, want %v", tt.names, got, tt.want)
		}
	}
}

func TestResolveBrokenIndex(t *testing.T) {
	for _, dep := range []string{
		"a.ko: b.ko\nb.ko: a.ko\n", // cycle
		"a.ko: missing.ko\n",       // dependency not in the index
	} {
		ix, err := ParseDep(strings.NewReader(dep))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ix.Resolve("a"); err == nil {
			t.Errorf("Resolve on %q: no error", dep)
		}
	}
}

func TestParseDepErrors(t *testing.T) {
	for _, in := range []string{
		"no colon here\n",
		": deps-without-module.ko\n",
		"two words.ko: x.ko\n",
		strings.Repeat("x", maxLine+1) + ":\n",
	} {
		if _, err := ParseDep(strings.NewReader(in)); err == nil {
			t.Errorf("ParseDep(%.40q): no error", in)
		}
	}
}

func TestWriteDepRoundTrip(t *testing.T) {
	ix, err := ParseDep(strings.NewReader(usbDep))
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := ix.WriteDep(&b, usbOrder); err != nil {
		t.Fatal(err)
	}
	sub, err := ParseDep(&b)
	if err != nil {
		t.Fatal(err)
	}
	got, err := sub.Resolve("xhci-pci")
	if err != nil || !slices.Equal(got, usbOrder) {
		t.Fatalf("subset Resolve = %v, %v", got, err)
	}
	if _, err := sub.Resolve("uhci-hcd"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("uhci-hcd in the subset: %v", err)
	}
	if err := ix.WriteDep(&b, []string{"nope.ko"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("WriteDep of unknown module: %v", err)
	}
}

// fakeKO builds a minimal ELF64 relocatable file whose .modinfo section
// holds the given NUL-separated entries.
func fakeKO(modinfo ...string) []byte {
	info := []byte(strings.Join(modinfo, "\x00") + "\x00")
	shstr := []byte("\x00.modinfo\x00.shstrtab\x00")
	le := binary.LittleEndian
	const ehsize, shentsize = 64, 64
	infoOff := ehsize
	shstrOff := infoOff + len(info)
	shOff := (shstrOff + len(shstr) + 7) &^ 7
	b := make([]byte, shOff+3*shentsize)
	copy(b, "\x7fELF\x02\x01\x01")
	le.PutUint16(b[16:], 1)  // ET_REL
	le.PutUint16(b[18:], 62) // EM_X86_64
	le.PutUint32(b[20:], 1)
	le.PutUint64(b[40:], uint64(shOff))
	le.PutUint16(b[52:], ehsize)
	le.PutUint16(b[58:], shentsize)
	le.PutUint16(b[60:], 3) // shnum
	le.PutUint16(b[62:], 2) // shstrndx
	copy(b[infoOff:], info)
	copy(b[shstrOff:], shstr)
	sh := func(i int, name, typ uint32, off, size int) {
		s := b[shOff+i*shentsize:]
		le.PutUint32(s[0:], name)
		le.PutUint32(s[4:], typ)
		le.PutUint64(s[24:], uint64(off))
		le.PutUint64(s[32:], uint64(size))
		le.PutUint64(s[48:], 1)
	}
	sh(1, 1, 1, infoOff, len(info))    // .modinfo, SHT_PROGBITS
	sh(2, 10, 3, shstrOff, len(shstr)) // .shstrtab, SHT_STRTAB
	return b
}

func TestScanModinfo(t *testing.T) {
	fsys := fstest.MapFS{
		"kernel/drivers/usb/host/xhci-pci.ko":     {Data: fakeKO("license=GPL", "depends=xhci-hcd,usbcore", "name=xhci_pci")},
		"kernel/drivers/usb/host/xhci-hcd.ko":     {Data: fakeKO("depends=usbcore,usb-common", "name=xhci_hcd")},
		"kernel/drivers/usb/core/usbcore.ko":      {Data: fakeKO("depends=usb-common")},
		"kernel/drivers/usb/common/usb-common.ko": {Data: fakeKO("depends=")},
		"kernel/drivers/usb/misc/needs-other.ko":  {Data: fakeKO("depends=not_in_tree")},
		"modules.builtin":                         {Data: []byte("kernel/drivers/usb/storage/usb-storage.ko\n")},
	}
	ix, err := Scan(fsys)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ix.Resolve("xhci-pci", "usb-storage")
	if err != nil || !slices.Equal(got, usbOrder) {
		t.Fatalf("Resolve = %v, %v; want %v", got, err, usbOrder)
	}
	if _, err := ix.Resolve("needs-other"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("module with a missing dependency: %v", err)
	}

	bad := fstest.MapFS{"kernel/x.ko": {Data: []byte("not an ELF")}}
	if _, err := Scan(bad); err == nil {
		t.Fatal("Scan of a non-ELF module: no error")
	}
	xz := fstest.MapFS{"kernel/x.ko.xz": {Data: []byte{0xfd}}}
	if _, err := Scan(xz); err == nil {
		t.Fatal("Scan of a compressed module: no error")
	}
}

func TestScanDepFile(t *testing.T) {
	ix, err := Scan(fstest.MapFS{"modules.dep": {Data: []byte(usbDep)}})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := ix.Resolve("xhci-pci"); err != nil || !slices.Equal(got, usbOrder) {
		t.Fatalf("Resolve = %v, %v", got, err)
	}
}

// TestScanDebianKernel runs against the kernel scripts/fetch-kernel.sh
// caches, when it is there.
func TestScanDebianKernel(t *testing.T) {
	dirs, _ := filepath.Glob("../../../../build/qemu/kernel/*/lib/modules/*")
	if len(dirs) == 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("no cached kernel under CI (make test runs scripts/fetch-kernel.sh)")
		}
		t.Skip("no cached kernel (scripts/fetch-kernel.sh)")
	}
	ix, err := Scan(os.DirFS(dirs[0]))
	if err != nil {
		t.Fatal(err)
	}
	got, err := ix.Resolve("xhci-pci")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 || Name(got[3]) != "xhci_pci" || Name(got[0]) != "usb_common" {
		t.Fatalf("Resolve(xhci-pci) = %v", got)
	}
}

// FuzzParseDep: ParseDep never panics; whatever it accepts resolves or
// fails cleanly, and its modules.dep subset parses again.
func FuzzParseDep(f *testing.F) {
	f.Add(usbDep)
	f.Add("a.ko: b.ko\nb.ko: a.ko\n")
	f.Add("# comment\n\nx.ko:\n")
	f.Fuzz(func(t *testing.T, in string) {
		ix, err := ParseDep(strings.NewReader(in))
		if err != nil {
			return
		}
		for mod := range ix.deps {
			order, err := ix.Resolve(mod)
			if err != nil {
				continue
			}
			var b bytes.Buffer
			if err := ix.WriteDep(&b, order); err != nil {
				t.Fatalf("WriteDep(%v): %v", order, err)
			}
			if _, err := ParseDep(&b); err != nil {
				t.Fatalf("re-parsing %q: %v", b.String(), err)
			}
		}
	})
}
