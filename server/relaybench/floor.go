package relaybench

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// The floor relay is the least a relay can do per APDU on this machine:
// plain TCP, 2-byte length-prefixed frames, no WebSocket framing, no JSON,
// one goroutine per user/card pair doing read-user, write-card, read-card,
// write-user. It makes the same four socket writes and reads per APDU as
// wsrc-server, so its CPU time per APDU is what the kernel charges for
// loopback TCP here — the part of the server's figure that no user-space
// work can remove. It is a yardstick for docs/performance.md, not a server.

// serveFloor pairs the i-th connection on users with the i-th on cards and
// relays frames between them until either listener is closed.
func serveFloor(users, cards net.Listener) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		u, err := users.Accept()
		if err != nil {
			return
		}
		c, err := cards.Accept()
		if err != nil {
			u.Close()
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer u.Close()
			defer c.Close()
			ur, cr := bufio.NewReader(u), bufio.NewReader(c)
			buf := make([]byte, 2+65535)
			for {
				if relayFrame(ur, c, buf) != nil || relayFrame(cr, u, buf) != nil {
					return
				}
			}
		}()
	}
}

// relayFrame copies one length-prefixed frame from src (buffered: one read
// syscall per frame) to dst with one write.
func relayFrame(src io.Reader, dst io.Writer, buf []byte) error {
	if _, err := io.ReadFull(src, buf[:2]); err != nil {
		return err
	}
	n := int(binary.BigEndian.Uint16(buf))
	if _, err := io.ReadFull(src, buf[2:2+n]); err != nil {
		return err
	}
	_, err := dst.Write(buf[:2+n])
	return err
}

// floorAPDU and floorResponse are the frames of the floor scenario: the
// same READ BINARY and 10 bytes + 9000 as the WebSocket scenarios carry.
var (
	floorAPDU     = []byte{0, 5, 0x00, 0xb0, 0x00, 0x00, 0x0a}
	floorResponse = []byte{0, 12, 0x98, 0x94, 0x44, 0, 0, 0, 0x11, 0x55, 0x13, 0xf4, 0x90, 0x00}
)

// Floor runs the closed-loop scenario against the floor relay.
func (r *Runner) Floor(ctx context.Context, n int, d time.Duration) (Result, error) {
	r.logf("floor (raw TCP relay): %d sessions, %v", n, d)
	srv, err := startServer(r.Self, append([]string{floorEnv + "=1"}, r.ChildEnv...), r.ChildArgs...)
	if err != nil {
		return Result{}, err
	}
	defer srv.stop()
	var d0 net.Dialer
	var conns []net.Conn
	var cardWG sync.WaitGroup // owns the fake cards' goroutines; they end when conns close
	defer func() {
		for _, c := range conns {
			c.Close()
		}
		cardWG.Wait()
	}()
	users := make([]net.Conn, n)
	for i := range n {
		u, err := d0.DialContext(ctx, "tcp", srv.userAddr)
		if err != nil {
			return Result{}, err
		}
		conns = append(conns, u)
		c, err := d0.DialContext(ctx, "tcp", srv.cardAddr)
		if err != nil {
			return Result{}, err
		}
		conns = append(conns, c)
		users[i] = u
		cardWG.Add(1)
		go func() {
			defer cardWG.Done()
			br := bufio.NewReader(c)
			buf := make([]byte, 2+65535)
			for {
				if _, err := io.ReadFull(br, buf[:2]); err != nil {
					return
				}
				if _, err := io.ReadFull(br, buf[2:2+binary.BigEndian.Uint16(buf)]); err != nil {
					return
				}
				if _, err := c.Write(floorResponse); err != nil {
					return
				}
			}
		}()
	}
	readers := make([]*bufio.Reader, n)
	for i, u := range users {
		readers[i] = bufio.NewReader(u)
	}
	roundTrip := func(i int, buf []byte) error {
		if _, err := users[i].Write(floorAPDU); err != nil {
			return err
		}
		if _, err := io.ReadFull(readers[i], buf[:len(floorResponse)]); err != nil {
			return err
		}
		return nil
	}
	res, err := r.closedLoop(srv, n, d, roundTrip)
	if err != nil {
		return Result{}, fmt.Errorf("floor: %w", err)
	}
	res.Name = fmt.Sprintf("floor: raw TCP relay, %d session(s)", n)
	return res, nil
}
