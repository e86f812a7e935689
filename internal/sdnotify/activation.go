package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"sort"

	"github.com/coreos/go-systemd/v22/activation"
)

// The FileDescriptorName= values of systemd/wsrc-server-user.socket and
// systemd/wsrc-server-card.socket. A socket unit names all of its sockets
// alike, which is why the two ports are two socket units.
const (
	UserSocket = "user" // the user port (4220): pySim-shell, wsrc, client library
	CardSocket = "card" // the card port (4221): agents
)

// Sockets are the listening sockets that systemd passed by socket
// activation, grouped by FileDescriptorName=. The zero value means "not
// socket-activated": the program binds its own addresses.
//
// A name may carry more than one listener (e.g. ListenStream=0.0.0.0:4220
// and ListenStream=[::]:4220 with BindIPv6Only=ipv6-only); the program
// serves them all. Whoever receives Sockets owns every listener in it.
type Sockets struct {
	User  []net.Listener            // named "user"
	Card  []net.Listener            // named "card"
	Other map[string][]net.Listener // any other name (unnamed ones carry the socket unit's name)
}

// Activated reports whether systemd passed any socket at all.
func (s Sockets) Activated() bool {
	return len(s.User)+len(s.Card)+len(s.Other) > 0
}

// Close closes every listener in s, e.g. those of names the program does
// not serve, and returns the first error.
func (s Sockets) Close() error {
	var first error
	closeAll := func(ls []net.Listener) {
		for _, l := range ls {
			if err := l.Close(); err != nil && first == nil {
				first = err
			}
		}
	}
	closeAll(s.User)
	closeAll(s.Card)
	for _, name := range s.otherNames() {
		closeAll(s.Other[name])
	}
	return first
}

// otherNames are the keys of Other in a stable order.
func (s Sockets) otherNames() []string {
	names := make([]string, 0, len(s.Other))
	for n := range s.Other {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// FDError is a passed file descriptor that is not a listening stream
// socket (a datagram socket, a FIFO, a file); Listeners then fails whole
// rather than silently serving on fewer ports than the unit asks for.
type FDError struct {
	FD   int    // the descriptor number, 3 and up
	Name string // its FileDescriptorName=
	Err  error  // from net.FileListener
}

func (e *FDError) Error() string {
	return fmt.Sprintf("socket activation: fd %d (%q) is not a listening stream socket: %v", e.FD, e.Name, e.Err)
}

func (e *FDError) Unwrap() error { return e.Err }

// Listeners returns the sockets passed by systemd (LISTEN_PID, LISTEN_FDS,
// LISTEN_FDNAMES), or the zero Sockets and nil when there are none or they
// are meant for another process. It unsets those variables, so call it
// once, early.
//
// It reads the descriptors with activation.Files rather than
// activation.ListenersWithNames: the latter silently drops (and leaks) a
// descriptor that is not a listener, which would leave a port unserved
// without a word; here that is an *FDError and every descriptor is closed.
func Listeners() (Sockets, error) {
	files := activation.Files(true)
	var s Sockets
	var errs []error
	for i, f := range files {
		l, err := net.FileListener(f)
		// FileListener dups the descriptor: the original is ours to close
		// either way.
		if cerr := f.Close(); cerr != nil && err == nil {
			err = cerr
		}
		if err != nil {
			errs = append(errs, &FDError{FD: firstFD + i, Name: f.Name(), Err: err})
			continue
		}
		switch name := f.Name(); name {
		case UserSocket:
			s.User = append(s.User, l)
		case CardSocket:
			s.Card = append(s.Card, l)
		default:
			if s.Other == nil {
				s.Other = make(map[string][]net.Listener)
			}
			s.Other[name] = append(s.Other[name], l)
		}
	}
	if len(errs) > 0 {
		_ = s.Close() // already failing; the FDError says why
		return Sockets{}, errors.Join(errs...)
	}
	return s, nil
}

// firstFD is SD_LISTEN_FDS_START.
const firstFD = 3
