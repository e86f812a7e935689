package qemuvm

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
)

// Errors for missing prerequisites; tests skip on them (or fail under CI).
var (
	// ErrNoQEMU: qemu-system-x86_64 is not installed.
	ErrNoQEMU = errors.New("qemuvm: qemu-system-x86_64 not found (apt-get install qemu-system-x86)")
	// ErrNoKernel: no kernel in the cache (run scripts/fetch-kernel.sh).
	ErrNoKernel = errors.New("qemuvm: no guest kernel (run scripts/fetch-kernel.sh)")
)

// KernelDirEnv names the environment variable that overrides where
// FindKernel looks (default: build/qemu under the module root).
const KernelDirEnv = "WSRC_QEMU_DIR"

// Kernel is a guest kernel unpacked by scripts/fetch-kernel.sh.
type Kernel struct {
	// Image is the file for -kernel: the unpacked vmlinux when there is
	// one (PVH boot, about 2 s faster under TCG), else the bzImage.
	Image string
	// Release is the kernel release, e.g. "6.1.0-56-amd64".
	Release string
	// Modules is the module tree, /lib/modules/<Release> of the package.
	Modules string
}

// FindQEMU returns the path of qemu-system-x86_64.
func FindQEMU() (string, error) {
	p, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return "", ErrNoQEMU
	}
	return p, nil
}

// CacheDir returns the directory scripts/fetch-kernel.sh fills: the value
// of $WSRC_QEMU_DIR, or build/qemu under the module root found upwards
// from the working directory.
func CacheDir() (string, error) {
	if d := os.Getenv(KernelDirEnv); d != "" {
		return d, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, "build", "qemu"), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("qemuvm: no go.mod above the working directory")
		}
		dir = parent
	}
}

// FindKernel returns the newest complete kernel under cache (see
// scripts/fetch-kernel.sh for the layout).
func FindKernel(cache string) (Kernel, error) {
	dirs, _ := filepath.Glob(filepath.Join(cache, "kernel", "*", ".complete"))
	slices.Sort(dirs)
	for _, marker := range slices.Backward(dirs) {
		dir := filepath.Dir(marker)
		k := Kernel{Release: filepath.Base(dir)}
		k.Modules = filepath.Join(dir, "lib", "modules", k.Release)
		for _, img := range []string{"vmlinux", "vmlinuz"} {
			if _, err := os.Stat(filepath.Join(dir, img)); err == nil {
				k.Image = filepath.Join(dir, img)
				break
			}
		}
		if _, err := os.Stat(k.Modules); err == nil && k.Image != "" {
			return k, nil
		}
	}
	return Kernel{}, fmt.Errorf("%w: nothing usable in %s", ErrNoKernel, cache)
}

// Accel returns the accelerator to use: "kvm" only when the kvm_intel or
// kvm_amd module is loaded and /dev/kvm opens, else "tcg". A /dev/kvm of
// another kind (kvm-pvm on the workplace machines) opens but cannot run a
// stock kernel at a usable speed, and QEMU's "kvm:tcg" fallback would not
// notice.
func Accel() string {
	hw := false
	for _, m := range []string{"/sys/module/kvm_intel", "/sys/module/kvm_amd"} {
		if _, err := os.Stat(m); err == nil {
			hw = true
		}
	}
	if !hw {
		return "tcg"
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return "tcg"
	}
	f.Close()
	return "kvm"
}
