package ccid

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wsrc-go/wsrc/ccid/internal/usbio"
)

// Netlink multicast groups of NETLINK_KOBJECT_UEVENT: the kernel's
// events, and udev's re-broadcast after its rules ran (device nodes then
// have their group and mode).
const (
	ueventGroupKernel = 1
	ueventGroupUdev   = 2
)

// watchUevents listens for USB hotplug on a netlink uevent socket until
// ctx is done. The socket is non-blocking and registered with Go's
// poller, so waiting costs nothing; ctx ends the read by a deadline.
func watchUevents(ctx context.Context, changed chan<- struct{}, log *slog.Logger) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_KOBJECT_UEVENT)
	if err != nil {
		return fmt.Errorf("netlink uevent socket: %w: %w", usbio.ErrUnsupported, err)
	}
	sa := &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: ueventGroupKernel | ueventGroupUdev}
	if err := unix.Bind(fd, sa); err != nil {
		sa.Groups = ueventGroupKernel
		if err2 := unix.Bind(fd, sa); err2 != nil {
			unix.Close(fd)
			return fmt.Errorf("binding netlink uevent socket: %w: %w", usbio.ErrUnsupported, err2)
		}
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 1<<20)
	f := os.NewFile(uintptr(fd), "netlink-uevent")
	defer f.Close()
	stop := context.AfterFunc(ctx, func() { _ = f.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	for {
		err := ueventLoop(ctx, f, changed, log)
		if err == nil || ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, syscall.ENOBUFS) {
			// Events were lost in a burst: rescan, keep listening.
			select {
			case changed <- struct{}{}:
			default:
			}
			continue
		}
		return fmt.Errorf("reading netlink uevents: %w", err)
	}
}
