package initramfs

import (
	"debug/elf"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
)

// ErrLibNotFound: a shared library an executable needs is not on the host.
var ErrLibNotFound = errors.New("initramfs: shared library not found")

// libDirs are the directories the dynamic loader searches by default, per
// machine (Debian's multiarch layout first), after DT_RUNPATH.
var libDirs = map[elf.Machine][]string{
	elf.EM_X86_64:  {"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"},
	elf.EM_AARCH64: {"/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"},
	elf.EM_ARM:     {"/lib/arm-linux-gnueabihf", "/usr/lib/arm-linux-gnueabihf", "/lib", "/usr/lib"},
}

// SharedLibs returns the host files a dynamically linked ELF executable
// needs to run: its program interpreter (the dynamic loader) and, found
// the way the loader finds them, the shared libraries of its DT_NEEDED
// entries and theirs. A static executable needs none. It reads the ELF
// headers itself rather than running ldd, so it also works for binaries
// of another architecture.
func SharedLibs(exe string) ([]string, error) {
	f, err := elf.Open(exe)
	if err != nil {
		return nil, fmt.Errorf("initramfs: %w", err)
	}
	defer f.Close()
	var out []string
	for _, p := range f.Progs {
		if p.Type != elf.PT_INTERP {
			continue
		}
		b := make([]byte, p.Filesz)
		if _, err := p.ReadAt(b, 0); err != nil {
			return nil, fmt.Errorf("initramfs: %s: reading PT_INTERP: %w", exe, err)
		}
		out = append(out, strings.TrimRight(string(b), "\x00"))
	}
	seen := map[string]bool{}
	var walk func(file string, f *elf.File) error
	walk = func(file string, f *elf.File) error {
		needed, err := f.DynString(elf.DT_NEEDED)
		if err != nil {
			return fmt.Errorf("initramfs: %s: %w", file, err)
		}
		var runpath []string
		for _, tag := range []elf.DynTag{elf.DT_RUNPATH, elf.DT_RPATH} {
			rp, _ := f.DynString(tag)
			for _, r := range rp {
				for _, d := range strings.Split(r, ":") {
					runpath = append(runpath, strings.ReplaceAll(d, "$ORIGIN", filepath.Dir(file)))
				}
			}
		}
		for _, lib := range needed {
			if seen[lib] {
				continue
			}
			seen[lib] = true
			p, lf, err := findLib(lib, f.Class, f.Machine, append(runpath, libDirs[f.Machine]...))
			if err != nil {
				return fmt.Errorf("%s (needed by %s): %w", lib, file, err)
			}
			out = append(out, p)
			err = walk(p, lf)
			lf.Close()
			if err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(exe, f); err != nil {
		return nil, err
	}
	return out, nil
}

// findLib returns the first file called name in dirs that is an ELF of the
// given class and machine (skipping, say, 32-bit libraries in /lib).
func findLib(name string, class elf.Class, machine elf.Machine, dirs []string) (string, *elf.File, error) {
	for _, d := range dirs {
		p := filepath.Join(d, name)
		f, err := elf.Open(p)
		if err != nil {
			continue
		}
		if f.Class == class && f.Machine == machine {
			return p, f, nil
		}
		f.Close()
	}
	return "", nil, ErrLibNotFound
}
