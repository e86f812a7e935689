// Package kmod finds Linux kernel modules and the order to load them in.
// The host side of the QEMU test harness uses it to pick the modules of a
// test initramfs from a kernel package's module tree; the guest init uses
// it to load them, dependencies first.
//
// The index is modules.dep, as depmod writes it:
//
//	kernel/drivers/usb/host/xhci-pci.ko: kernel/drivers/usb/host/xhci-hcd.ko kernel/drivers/usb/core/usbcore.ko
//
// A kernel package unpacked with dpkg-deb has no modules.dep (depmod runs
// at install time), so Scan builds the same index from the "depends=" field
// of each module's .modinfo section.
package kmod

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"slices"
	"sort"
	"strings"
)

// ErrNotFound: a requested module is neither in the index nor built in.
var ErrNotFound = errors.New("kmod: module not found")

// maxLine bounds one modules.dep line (real ones are under 1 KiB).
const maxLine = 64 * 1024

// Index maps modules to their dependencies. Paths are relative to the
// module directory (/lib/modules/<release>).
type Index struct {
	deps    map[string][]string // module path -> dependency paths
	byName  map[string]string   // module name -> module path
	builtin map[string]bool     // names of modules built into the kernel
}

// Name returns the module name for a path or name: the file name without
// ".ko" and compression suffixes, with '-' spelled '_' (as the kernel does).
func Name(p string) string {
	b := path.Base(p)
	if i := strings.Index(b, ".ko"); i >= 0 {
		b = b[:i]
	}
	return strings.ReplaceAll(b, "-", "_")
}

func newIndex() *Index {
	return &Index{deps: map[string][]string{}, byName: map[string]string{}, builtin: map[string]bool{}}
}

func (ix *Index) add(mod string, deps []string) {
	ix.deps[mod] = deps
	ix.byName[Name(mod)] = mod
}

// ParseDep reads a modules.dep file.
func ParseDep(r io.Reader) (*Index, error) {
	ix := newIndex()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), maxLine)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		mod, rest, ok := strings.Cut(line, ":")
		mod = strings.TrimSpace(mod)
		if !ok || mod == "" || strings.ContainsAny(mod, " \t") {
			return nil, fmt.Errorf("kmod: modules.dep line %d: want \"module: deps...\", got %q", n, line)
		}
		ix.add(mod, strings.Fields(rest))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("kmod: reading modules.dep: %w", err)
	}
	return ix, nil
}

// SetBuiltin records the modules built into the kernel (the lines of
// modules.builtin); resolving one of them yields nothing to load.
func (ix *Index) SetBuiltin(r io.Reader) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), maxLine)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			ix.builtin[Name(l)] = true
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("kmod: reading modules.builtin: %w", err)
	}
	return nil
}

// Scan builds the index of the module tree fsys (a /lib/modules/<release>
// directory): from modules.dep when there is one, else from every module's
// .modinfo. Dependencies outside the tree are reported by Resolve.
func Scan(fsys fs.FS) (*Index, error) {
	var ix *Index
	if f, err := fsys.Open("modules.dep"); err == nil {
		ix, err = ParseDep(f)
		f.Close()
		if err != nil {
			return nil, err
		}
	} else {
		ix, err = scanModinfo(fsys)
		if err != nil {
			return nil, err
		}
	}
	if f, err := fsys.Open("modules.builtin"); err == nil {
		defer f.Close()
		if err := ix.SetBuiltin(f); err != nil {
			return nil, err
		}
	}
	return ix, nil
}

func scanModinfo(fsys fs.FS) (*Index, error) {
	names := map[string][]string{} // module path -> dependency names
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !strings.Contains(path.Base(p), ".ko") {
			return nil
		}
		if !strings.HasSuffix(p, ".ko") {
			return fmt.Errorf("kmod: %s: compressed modules are not supported", p)
		}
		b, err := fs.ReadFile(fsys, p)
		if err != nil {
			return err
		}
		deps, err := modinfoDepends(b)
		if err != nil {
			return fmt.Errorf("kmod: %s: %w", p, err)
		}
		names[p] = deps
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("kmod: scanning modules: %w", err)
	}
	ix := newIndex()
	for p := range names {
		ix.byName[Name(p)] = p
	}
	for p, dn := range names {
		// modules.dep lists every module a module needs, transitively.
		var all []string
		seen := map[string]bool{}
		var walk func(string)
		walk = func(n string) {
			dp, ok := ix.byName[Name(n)]
			if !ok || seen[dp] {
				if !ok {
					all = append(all, n) // left unresolved: Resolve reports it
				}
				return
			}
			seen[dp] = true
			all = append(all, dp)
			for _, d := range names[dp] {
				walk(d)
			}
		}
		for _, d := range dn {
			walk(d)
		}
		ix.deps[p] = all
	}
	return ix, nil
}

// modinfoDepends returns the "depends=" names of a module's .modinfo.
func modinfoDepends(ko []byte) ([]string, error) {
	f, err := elf.NewFile(bytes.NewReader(ko))
	if err != nil {
		return nil, err
	}
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, errors.New("no .modinfo section")
	}
	info, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("reading .modinfo: %w", err)
	}
	for _, kv := range bytes.Split(info, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			var deps []string
			for _, d := range strings.Split(string(v), ",") {
				if d != "" {
					deps = append(deps, d)
				}
			}
			return deps, nil
		}
	}
	return nil, nil
}

// Resolve returns the module paths to load for names, dependencies first,
// each once. Built-in modules are skipped; an unknown name or a dependency
// missing from the index is an ErrNotFound.
func (ix *Index) Resolve(names ...string) ([]string, error) {
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(mod string) error
	visit = func(mod string) error {
		switch state[mod] {
		case 1:
			return fmt.Errorf("kmod: dependency cycle at %s", mod)
		case 2:
			return nil
		}
		deps, ok := ix.deps[mod]
		if !ok {
			if ix.builtin[Name(mod)] {
				return nil
			}
			return fmt.Errorf("%w: %s", ErrNotFound, mod)
		}
		state[mod] = 1
		// modules.dep lists transitive dependencies, nearest last; the
		// recursion orders them whatever the listing.
		for _, d := range deps {
			if p, ok := ix.byName[Name(d)]; ok {
				d = p
			}
			if err := visit(d); err != nil {
				return err
			}
		}
		state[mod] = 2
		order = append(order, mod)
		return nil
	}
	for _, n := range names {
		mod, ok := ix.byName[Name(n)]
		if !ok {
			if ix.builtin[Name(n)] {
				continue
			}
			return nil, fmt.Errorf("%w: %s", ErrNotFound, n)
		}
		if err := visit(mod); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// WriteDep writes the modules.dep lines of mods (paths from Resolve),
// sorted, each with its dependencies as in the index.
func (ix *Index) WriteDep(w io.Writer, mods []string) error {
	mods = slices.Clone(mods)
	sort.Strings(mods)
	var b strings.Builder
	for _, m := range mods {
		deps, ok := ix.deps[m]
		if !ok {
			return fmt.Errorf("%w: %s", ErrNotFound, m)
		}
		b.WriteString(m + ":")
		for _, d := range deps {
			b.WriteString(" " + d)
		}
		b.WriteString("\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}
