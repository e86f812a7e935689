// Package initramfs writes the initramfs of the QEMU test VMs: a newc cpio
// archive (optionally gzipped) that the kernel unpacks as its root file
// system. It needs neither root nor the cpio tool.
//
// Besides plain files it knows what a test guest needs from the host:
// kernel modules with their dependencies (AddModules, through package kmod)
// and dynamically linked executables with their loader and shared
// libraries (AddExecutable, through SharedLibs), copied to the same paths
// as on the host so that the guest's loader finds them.
//
// Several archives may be concatenated into one initrd file; the kernel
// unpacks them in order, later entries replacing earlier ones. The VM
// runner uses that to append a per-test script to a shared base image.
package initramfs

import (
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/wsrc-go/wsrc/internal/testenv/qemuvm/kmod"
)

// Builder adds entries to one archive. Parent directories are created as
// needed; adding a path twice keeps the first entry. Methods return the
// first error again once one happened.
type Builder struct {
	cw   *cpioWriter
	zw   *gzip.Writer // nil when not compressing
	have map[string]bool
	err  error
}

// New starts an archive on w, gzip-compressed (fast level) when gz is set.
// Close must be called to finish it; it does not close w.
func New(w io.Writer, gz bool) *Builder {
	b := &Builder{have: map[string]bool{".": true}}
	if gz {
		b.zw, _ = gzip.NewWriterLevel(w, gzip.BestSpeed) // the level is valid
		w = b.zw
	}
	b.cw = newCPIOWriter(w)
	return b
}

// clean turns an absolute or relative guest path into the archive's form.
func clean(name string) (string, error) {
	p := path.Clean(strings.TrimPrefix(name, "/"))
	if p == "." || p == ".." || strings.HasPrefix(p, "../") {
		return "", fmt.Errorf("initramfs: bad path %q", name)
	}
	return p, nil
}

// add writes one entry after its parents, unless the path is already there.
func (b *Builder) add(name string, mode uint32, major, minor uint32, data []byte) error {
	if b.err != nil {
		return b.err
	}
	p, err := clean(name)
	if err != nil {
		return err
	}
	if b.have[p] {
		return nil
	}
	if dir := path.Dir(p); !b.have[dir] {
		if err := b.add(dir, modeDir|0o755, 0, 0, nil); err != nil {
			return err
		}
	}
	b.have[p] = true
	if err := b.cw.entry(p, mode, major, minor, data); err != nil {
		b.err = fmt.Errorf("initramfs: writing %s: %w", p, err)
	}
	return b.err
}

// Dir adds a directory with mode perm.
func (b *Builder) Dir(name string, perm fs.FileMode) error {
	return b.add(name, modeDir|uint32(perm.Perm()), 0, 0, nil)
}

// File adds a regular file.
func (b *Builder) File(name string, perm fs.FileMode, data []byte) error {
	return b.add(name, modeFile|uint32(perm.Perm()), 0, 0, data)
}

// Symlink adds a symbolic link name pointing at target.
func (b *Builder) Symlink(name, target string) error {
	return b.add(name, modeSymlink|0o777, 0, 0, []byte(target))
}

// CharDev adds a character device node (the kernel needs /dev/console
// before devtmpfs is mounted).
func (b *Builder) CharDev(name string, perm fs.FileMode, major, minor uint32) error {
	return b.add(name, modeChar|uint32(perm.Perm()), major, minor, nil)
}

// CopyFile adds the host file src at dst with src's permission bits.
func (b *Builder) CopyFile(dst, src string) error {
	if b.err != nil {
		return b.err
	}
	st, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("initramfs: %s is not a regular file", src)
	}
	data, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	return b.File(dst, st.Mode().Perm(), data)
}

// AddExecutable adds the host executable src at dst and, when it is
// dynamically linked, its loader and every shared library it needs, at
// their host paths (symbolic links included, so the paths the binary names
// resolve the same way in the guest).
func (b *Builder) AddExecutable(dst, src string) error {
	if err := b.CopyFile(dst, src); err != nil {
		return err
	}
	deps, err := SharedLibs(src)
	if err != nil {
		return err
	}
	for _, d := range deps {
		if err := b.addHostPath(d); err != nil {
			return err
		}
	}
	return nil
}

// addHostPath copies an absolute host path, following symbolic links in
// its last element and recreating them as links.
func (b *Builder) addHostPath(p string) error {
	for range 16 {
		st, err := os.Lstat(p)
		if err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}
		if st.Mode()&fs.ModeSymlink == 0 {
			return b.CopyFile(p, p)
		}
		target, err := os.Readlink(p)
		if err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}
		if err := b.Symlink(p, target); err != nil {
			return err
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(p), target)
		}
		p = target
	}
	return fmt.Errorf("initramfs: too many symbolic links at %s", p)
}

// AddModules adds the modules names, with their dependencies, from the host
// module directory moddir (a /lib/modules/<release> tree) to
// /lib/modules/<release>, with a modules.dep that lists just them. It
// returns the module paths in load order.
func (b *Builder) AddModules(moddir, release string, names ...string) ([]string, error) {
	ix, err := kmod.Scan(os.DirFS(moddir))
	if err != nil {
		return nil, err
	}
	order, err := ix.Resolve(names...)
	if err != nil {
		return nil, err
	}
	base := path.Join("lib/modules", release)
	for _, m := range order {
		if err := b.CopyFile(path.Join(base, m), filepath.Join(moddir, m)); err != nil {
			return nil, err
		}
	}
	var dep strings.Builder
	if err := ix.WriteDep(&dep, order); err != nil {
		return nil, err
	}
	if err := b.File(path.Join(base, "modules.dep"), 0o644, []byte(dep.String())); err != nil {
		return nil, err
	}
	return order, nil
}

// Close writes the trailer and flushes the compressor.
func (b *Builder) Close() error {
	if b.err != nil {
		return b.err
	}
	err := b.cw.close()
	if b.zw != nil {
		err = errors.Join(err, b.zw.Close())
	}
	if err != nil {
		b.err = fmt.Errorf("initramfs: closing: %w", err)
		return b.err
	}
	b.err = errors.New("initramfs: archive closed")
	return nil
}
