package main

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
	"unsafe"
)

// hostname is the guest's name (programs that report it, like wsrc-agent,
// would otherwise say "(none)").
const hostname = "wsrc-vm"

// setupSystem does what init must before running anything: kernel file
// systems, a few directories, the host name, loopback up. It returns the problems it met
// (each is reported, none is fatal).
func setupSystem() []error {
	var errs []error
	for _, m := range []struct{ src, dst, fstype string }{
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
		{"devtmpfs", "/dev", "devtmpfs"}, // gives /dev/bus/usb/BBB/DDD
	} {
		if err := os.MkdirAll(m.dst, 0o755); err != nil {
			errs = append(errs, err)
		}
		if err := syscall.Mount(m.src, m.dst, m.fstype, 0, ""); err != nil {
			errs = append(errs, fmt.Errorf("mounting %s: %w", m.dst, err))
		}
	}
	for _, d := range []string{"/tmp", "/run", "/root"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			errs = append(errs, err)
		}
	}
	os.Setenv("HOME", "/root")
	if err := syscall.Sethostname([]byte(hostname)); err != nil {
		errs = append(errs, fmt.Errorf("setting the host name: %w", err))
	}
	if err := loopbackUp(); err != nil {
		errs = append(errs, fmt.Errorf("bringing up lo: %w", err))
	}
	return errs
}

// loopbackUp sets IFF_UP on lo; the kernel then gives it 127.0.0.1/8.
func loopbackUp() error {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	var ifr struct {
		name  [syscall.IFNAMSIZ]byte
		flags uint16
		_     [22]byte // the rest of struct ifreq's union
	}
	copy(ifr.name[:], "lo")
	if err := ioctl(fd, syscall.SIOCGIFFLAGS, unsafe.Pointer(&ifr)); err != nil {
		return err
	}
	ifr.flags |= syscall.IFF_UP | syscall.IFF_RUNNING
	return ioctl(fd, syscall.SIOCSIFFLAGS, unsafe.Pointer(&ifr))
}

func ioctl(fd int, req uintptr, arg unsafe.Pointer) error {
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), req, uintptr(arg)); e != 0 {
		return e
	}
	return nil
}

// finitModule loads a module file; one that is already loaded is fine.
func finitModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	nr := sysFinitModule // a variable: -1 must not be converted as a constant
	if nr < 0 {
		return syscall.ENOSYS
	}
	params := []byte{0}
	_, _, e := syscall.Syscall(uintptr(nr), f.Fd(), uintptr(unsafe.Pointer(&params[0])), 0)
	if e != 0 && !errors.Is(e, syscall.EEXIST) {
		return e
	}
	return nil
}

// powerOff syncs and powers the machine off; QEMU then exits.
func powerOff() {
	syscall.Sync()
	syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF)
	// Only reached if the reboot call failed: let the kernel panic
	// (panic=-1 reboots, and QEMU runs with -no-reboot).
	time.Sleep(time.Second)
	os.Exit(1)
}
