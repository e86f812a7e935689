package ccid

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"strings"
)

// Hotplug comes from kernel uevents on a NETLINK_KOBJECT_UEVENT socket:
// gousb has no hotplug API. The socket (netlink_linux.go) is the only
// OS-specific part; parsing and the read loop are pure and tested.

// uevent is one parsed uevent: the kernel's "ACTION@DEVPATH" message or
// udev's "libudev" message, both carrying KEY=VALUE properties.
type uevent struct {
	Action, DevPath, Subsystem, DevType string
	FromUdev                            bool
}

// udevMagic marks udev's netlink messages (after the "libudev\0" prefix).
const udevMagic = 0xfeedcafe

// parseUevent parses one uevent datagram.
func parseUevent(b []byte) (uevent, error) {
	var ev uevent
	var props []byte
	switch {
	case bytes.HasPrefix(b, []byte("libudev\x00")):
		if len(b) < 24 || binary.BigEndian.Uint32(b[8:]) != udevMagic {
			return ev, errors.New("udev message without magic")
		}
		off, n := binary.LittleEndian.Uint32(b[16:]), binary.LittleEndian.Uint32(b[20:])
		if uint64(off)+uint64(n) > uint64(len(b)) || off < 24 {
			return ev, errors.New("udev message with properties out of bounds")
		}
		props, ev.FromUdev = b[off:off+n], true
	default:
		i := bytes.IndexByte(b, 0)
		if i < 0 || !bytes.Contains(b[:i], []byte("@")) {
			return ev, errors.New("not a uevent")
		}
		props = b[i+1:]
	}
	for _, kv := range bytes.Split(props, []byte{0}) {
		k, v, ok := strings.Cut(string(kv), "=")
		if !ok {
			continue
		}
		switch k {
		case "ACTION":
			ev.Action = v
		case "DEVPATH":
			ev.DevPath = v
		case "SUBSYSTEM":
			ev.Subsystem = v
		case "DEVTYPE":
			ev.DevType = v
		}
	}
	if ev.Action == "" {
		return ev, errors.New("uevent without ACTION")
	}
	return ev, nil
}

// relevant reports whether an event may add or remove a reader: a USB
// device or interface appearing, going, or being bound or unbound (pcscd
// releasing a reader shows as a change of its interfaces' driver).
func (ev uevent) relevant() bool {
	if ev.Subsystem != "usb" || (ev.DevType != "usb_device" && ev.DevType != "usb_interface") {
		return false
	}
	switch ev.Action {
	case "add", "remove", "bind", "unbind", "change":
		return true
	}
	return false
}

// ueventLoop reads uevent datagrams from r until ctx is done or r fails
// and signals changed (without blocking) for every relevant one.
func ueventLoop(ctx context.Context, r io.Reader, changed chan<- struct{}, log *slog.Logger) error {
	buf := make([]byte, 16<<10)
	for {
		n, err := r.Read(buf)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		ev, perr := parseUevent(buf[:n])
		if perr != nil {
			log.Debug("ccid: ignoring netlink message", "err", perr)
			continue
		}
		if !ev.relevant() {
			continue
		}
		log.Debug("ccid: hotplug", "action", ev.Action, "devpath", ev.DevPath, "udev", ev.FromUdev)
		select {
		case changed <- struct{}{}:
		default:
		}
	}
}
