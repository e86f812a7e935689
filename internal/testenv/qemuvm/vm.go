// Package qemuvm boots throw-away Linux VMs in QEMU for end-to-end tests of
// the USB CCID path: a stock Debian kernel, an initramfs built by the test
// (package initramfs) whose PID 1 is vminit, N emulated usb-ccid readers
// whose cards the test serves over VSCard (package vscard), and a serial
// console carrying vmscript marker lines back to the test.
//
//	test ──Config──► Start ──► qemu-system-x86_64 ─┬─ -kernel, -initrd (+ /vmscript appended)
//	  ▲                                           ├─ usb-ccid + ccid-card-passthru ──unix socket──► VM.Reader(i) ──► vscard.Client
//	  └──────── Console (events) ◄── ttyS0 ◄──────┘
//
// The QEMU command line, the VSCard facts and the timings come from the
// prototype in /work/shared/ccid/qemu-prototype: under TCG a boot to the
// first guest instruction of init takes about 1.5 s with a PVH vmlinux.
//
// Every VM runs in its own process group and temporary directory; Close
// kills the group by QEMU's PID and removes the directory.
package qemuvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/wsrc-go/wsrc/internal/testenv/qemuvm/initramfs"
)

// Config describes one VM.
type Config struct {
	// QEMU is the qemu-system-x86_64 binary; "" looks it up in PATH.
	QEMU string
	// Kernel is the guest kernel image (-kernel).
	Kernel string
	// Initrd is the base initramfs (-initrd).
	Initrd string
	// Files are added to the initramfs for this VM only, as an archive
	// appended to a copy of Initrd (e.g. "/vmscript").
	Files map[string][]byte
	// Readers is the number of usb-ccid readers, each with a
	// ccid-card-passthru card served over VM.Reader(i).
	Readers int
	// Append is added to the kernel command line.
	Append []string
	// MemoryMB is the guest RAM, default 512.
	MemoryMB int
	// CPUs is the number of guest CPUs, default 1.
	CPUs int
	// Accel is "tcg" or "kvm"; "" uses Accel().
	Accel string
	// Echo, when set, receives every console line as it arrives.
	Echo func(line string)
	// Stderr receives QEMU's own error output; nil discards it.
	Stderr io.Writer
	// Args are added at the end of QEMU's command line, e.g. trace
	// options ("-trace", "usb_xhci_xfer_*", "-D", logfile) when profiling.
	Args []string
}

// VM is a running QEMU. Its goroutines (console reader, socket accepts)
// end by the time Wait or Close returns.
type VM struct {
	cmd     *exec.Cmd
	dir     string // temporary: sockets, initrd copy
	console *Console
	readers []*readerSock

	exited  chan struct{} // closed when QEMU has exited and the console is read
	waitErr error         // QEMU's exit status; valid once exited is closed

	closeOnce sync.Once
}

// readerSock is the VSCard socket of one reader: its accept goroutine
// delivers QEMU's connection (or the accept error) once on conn.
type readerSock struct {
	ln   net.Listener
	conn chan acceptResult // buffered: the accept goroutine never blocks
	done chan struct{}     // closed when the accept goroutine has sent
}

type acceptResult struct {
	c   net.Conn
	err error
}

// Start boots a VM. The VM lives until it powers off, Close is called, or
// ctx ends (which kills it).
func Start(ctx context.Context, cfg Config) (*VM, error) {
	if cfg.QEMU == "" {
		p, err := FindQEMU()
		if err != nil {
			return nil, err
		}
		cfg.QEMU = p
	}
	if cfg.MemoryMB == 0 {
		cfg.MemoryMB = 512
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = 1
	}
	if cfg.Accel == "" {
		cfg.Accel = Accel()
	}
	dir, err := os.MkdirTemp("", "wsrc-qemuvm-")
	if err != nil {
		return nil, err
	}
	vm := &VM{dir: dir, console: newConsole(), exited: make(chan struct{})}
	ok := false
	defer func() {
		if !ok {
			vm.closeSockets()
			os.RemoveAll(dir)
		}
	}()

	initrd := cfg.Initrd
	if len(cfg.Files) > 0 {
		if initrd, err = appendFiles(dir, cfg.Initrd, cfg.Files); err != nil {
			return nil, err
		}
	}
	cmdline := append([]string{"console=ttyS0", "panic=-1", "quiet"}, cfg.Append...)
	args := []string{
		"-accel", cfg.Accel, "-machine", "q35", "-m", fmt.Sprint(cfg.MemoryMB), "-smp", fmt.Sprint(cfg.CPUs),
		"-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
		"-serial", "stdio", "-no-reboot",
		"-kernel", cfg.Kernel, "-initrd", initrd, "-append", strings.Join(cmdline, " "),
		"-device", "qemu-xhci,id=usb",
	}
	for i := range cfg.Readers {
		sock := filepath.Join(dir, fmt.Sprintf("vsc%d.sock", i))
		ln, err := net.Listen("unix", sock)
		if err != nil {
			return nil, fmt.Errorf("qemuvm: reader %d socket: %w", i, err)
		}
		r := &readerSock{ln: ln, conn: make(chan acceptResult, 1), done: make(chan struct{})}
		vm.readers = append(vm.readers, r)
		args = append(args,
			"-chardev", fmt.Sprintf("socket,id=vsc%d,path=%s", i, sock),
			"-device", fmt.Sprintf("usb-ccid,id=ccid%d,bus=usb.0", i),
			"-device", fmt.Sprintf("ccid-card-passthru,chardev=vsc%d,bus=ccid%d.0", i, i))
	}

	args = append(args, cfg.Args...)
	cmd := exec.Command(cfg.QEMU, args...)
	// Own process group, killed as a whole; killed too if the test
	// process dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Stderr = cfg.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("qemuvm: starting QEMU: %w", err)
	}
	vm.cmd = cmd
	ok = true

	for _, r := range vm.readers {
		go func() {
			defer close(r.done)
			c, err := r.ln.Accept()
			r.conn <- acceptResult{c, err}
		}()
	}
	go func() {
		vm.console.read(stdout, cfg.Echo)
		vm.waitErr = cmd.Wait()
		close(vm.exited)
	}()
	go func() {
		select {
		case <-ctx.Done():
			vm.kill()
		case <-vm.exited:
		}
	}()
	return vm, nil
}

// appendFiles writes dir/initrd: a copy of base, padded to 4 bytes, then
// an uncompressed archive of files.
func appendFiles(dir, base string, files map[string][]byte) (string, error) {
	out := filepath.Join(dir, "initrd")
	f, err := os.Create(out)
	if err != nil {
		return "", err
	}
	defer f.Close()
	src, err := os.Open(base)
	if err != nil {
		return "", fmt.Errorf("qemuvm: %w", err)
	}
	n, err := io.Copy(f, src)
	src.Close()
	if err != nil {
		return "", fmt.Errorf("qemuvm: copying initrd: %w", err)
	}
	if pad := (4 - n%4) % 4; pad != 0 {
		if _, err := f.Write(make([]byte, pad)); err != nil {
			return "", err
		}
	}
	b := initramfs.New(f, false)
	for name, data := range files {
		if err := b.File(name, 0o755, data); err != nil {
			return "", err
		}
	}
	if err := b.Close(); err != nil {
		return "", err
	}
	return out, f.Close()
}

// Console returns the guest console.
func (vm *VM) Console() *Console { return vm.console }

// PID returns QEMU's process id.
func (vm *VM) PID() int { return vm.cmd.Process.Pid }

// Reader waits for QEMU to connect reader i's VSCard socket and returns
// the connection, which the caller owns.
func (vm *VM) Reader(ctx context.Context, i int) (net.Conn, error) {
	if i < 0 || i >= len(vm.readers) {
		return nil, fmt.Errorf("qemuvm: no reader %d", i)
	}
	select {
	case r := <-vm.readers[i].conn:
		if r.err != nil {
			return nil, fmt.Errorf("qemuvm: reader %d: %w", i, r.err)
		}
		return r.c, nil
	case <-vm.exited:
		return nil, ErrExited
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// CPUTime returns the CPU time QEMU used (user and system), a measure of
// the VM's cost that, unlike wall time, does not depend on the host's
// load; zero until QEMU has exited.
func (vm *VM) CPUTime() time.Duration {
	select {
	case <-vm.exited:
	default:
		return 0
	}
	if st := vm.cmd.ProcessState; st != nil {
		return st.UserTime() + st.SystemTime()
	}
	return 0
}

// Wait waits until QEMU exits (the guest powered off) and returns its
// exit error; when ctx ends first it kills QEMU.
func (vm *VM) Wait(ctx context.Context) error {
	select {
	case <-vm.exited:
		return vm.waitErr
	case <-ctx.Done():
		vm.kill()
		<-vm.exited
		return fmt.Errorf("qemuvm: VM killed: %w", ctx.Err())
	}
}

// Close kills QEMU if it still runs, waits for it, and removes the
// VM's sockets and files. It is safe to call more than once.
func (vm *VM) Close() error {
	vm.closeOnce.Do(func() {
		vm.kill()
		vm.closeSockets()
		os.RemoveAll(vm.dir)
	})
	return nil
}

// kill kills QEMU's process group (by its PID) and waits for the exit.
func (vm *VM) kill() {
	select {
	case <-vm.exited:
		return
	default:
	}
	if err := syscall.Kill(-vm.cmd.Process.Pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		vm.cmd.Process.Kill()
	}
	select {
	case <-vm.exited:
	case <-time.After(10 * time.Second):
		// A child holding the console pipe open; nothing more to do.
	}
}

// closeSockets closes the listeners and any connection nobody took.
func (vm *VM) closeSockets() {
	for _, r := range vm.readers {
		r.ln.Close()
		if vm.cmd != nil { // the accept goroutines run
			<-r.done
		}
		select {
		case a := <-r.conn:
			if a.c != nil {
				a.c.Close()
			}
		default:
		}
	}
}
