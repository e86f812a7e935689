// Command apdubench is the guest program of the CCID-versus-PC/SC
// benchmark (TestQEMUBenchCCIDvsPCSC): it opens the first card it finds
// through one stack and times N identical APDUs of each kind, one after
// the other, measuring every Transmit on its own.
//
//	-stack ccid   the project's ccid package (gousb, libusb), no pcscd
//	-stack pcsc   the project's pcsc package (ebfe/scard, libpcsclite)
//	              talking to pcscd with libccid
//	-stack usbfs  the floor: one synchronous usbfs bulk-out and bulk-in
//	              per APDU (package rawccid), no driver at all
//
// The APDUs suit card/sim's file system:
//
//	select-mf  00A4000C023F00   SELECT MF, no response data    → 9000
//	read-10    00B082000A       READ BINARY EF.ICCID by SFI 2  → 10 bytes 9000
//	read-256   00B0000000       READ BINARY of EF 6F99 (selected once
//	                            beforehand, not timed)          → 256 bytes 9000
//
// Every response is checked (length, SW, and for read-256 the file's
// content, byte i = i mod 251); a wrong one ends the run with exit 1.
// Output, one line each:
//
//	card <stack> <reader> atr <hex>
//	clocksource <the guest kernel's clock source>
//	result <stack> <apdu> <n> <mean ns> <p50 ns> <p99 ns> <min ns> <max ns>
//	cpu <stack> <apdu> <own CPU ns per APDU> <pcscd's CPU ns per APDU>
//	done <stack> <wall ns for all timed APDUs>
//
// The CPU figures are guest CPU time (user + system) over the timed
// APDUs of one kind: this process's, and pcscd's (found by name in /proc;
// 0 for the other stacks). pcscd's is read from /proc/PID/stat in clock
// ticks, so it is coarse for small -n.
package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/ccid"
	"github.com/wsrc-go/wsrc/pcsc"
	"github.com/wsrc-go/wsrc/test/qemu/guest/internal/rawccid"
)

func main() {
	stack := flag.String("stack", "ccid", "ccid (direct, libusb) or pcsc (pcscd + libccid)")
	n := flag.Int("n", 200, "timed APDUs of each kind")
	warm := flag.Int("warmup", 20, "untimed APDUs of each kind before the timed ones")
	timeout := flag.Duration("timeout", 2*time.Minute, "give up after this long")
	inBuf := flag.Int("usbfs-buf", 4096, "bulk-in buffer of -stack usbfs, bytes")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	var err error
	switch *stack {
	case "ccid":
		err = viaCCID(ctx, log, func(c card.Card, reader string) error { return run(ctx, "ccid", reader, c, *n, *warm) })
	case "pcsc":
		err = viaPCSC(ctx, log, func(c card.Card, reader string) error { return run(ctx, "pcsc", reader, c, *n, *warm) })
	case "usbfs":
		err = viaUSBFS(*inBuf, func(c card.Card, reader string) error { return run(ctx, "usbfs", reader, c, *n, *warm) })
	default:
		err = fmt.Errorf("unknown stack %q", *stack)
	}
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
}

// viaCCID runs the driver until the first card is inserted, hands the
// opened card to fn, and releases the reader again (the driver's Close),
// so that pcscd can claim it afterwards.
func viaCCID(ctx context.Context, log *slog.Logger, fn func(card.Card, string) error) error {
	events := make(chan ccid.Event)
	runErr := make(chan error, 1)
	rctx, stop := context.WithCancel(ctx)
	defer func() {
		stop()
		<-runErr // the driver has closed: the reader is free
	}()
	go func() { runErr <- ccid.Watch(rctx, ccid.Options{Logger: log}, events) }()
	for {
		select {
		case ev := <-events:
			if ev.Kind != ccid.CardInserted {
				continue
			}
			c, err := ev.Open(ctx)
			if err != nil {
				return fmt.Errorf("opening the card in %s: %w", ev.Reader.Name, err)
			}
			err = fn(c, ev.Reader.Name)
			if cerr := c.Close(); err == nil {
				err = cerr
			}
			return err
		case err := <-runErr:
			runErr <- err // for the deferred wait
			return fmt.Errorf("driver stopped: %w", err)
		case <-ctx.Done():
			return fmt.Errorf("no card: %w", ctx.Err())
		}
	}
}

// viaPCSC waits (pcsc.Watch, which also waits for pcscd to come up) for a
// reader with a card, connects to it exclusively and hands it to fn.
func viaPCSC(ctx context.Context, log *slog.Logger, fn func(card.Card, string) error) error {
	found := make(chan string, 1)
	wctx, stop := context.WithCancel(ctx)
	watchErr := make(chan error, 1)
	go func() {
		watchErr <- pcsc.Watch(wctx, pcsc.WatchOptions{Logger: log, MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second},
			func(ev pcsc.ReaderEvent) {
				if ev.CardPresent && !ev.Mute {
					select {
					case found <- ev.Reader:
					default:
					}
				}
			})
	}()
	var reader string
	select {
	case reader = <-found:
	case err := <-watchErr:
		stop()
		return fmt.Errorf("watching pcscd: %w", err)
	case <-ctx.Done():
	}
	stop()
	if err := <-watchErr; err != nil {
		return fmt.Errorf("watching pcscd: %w", err)
	}
	if reader == "" {
		return fmt.Errorf("no card in any pcscd reader: %w", ctx.Err())
	}
	c, err := pcsc.Open(ctx, reader, pcsc.OpenOptions{})
	if err != nil {
		return err
	}
	err = fn(c, reader)
	if cerr := c.Close(); err == nil {
		err = cerr
	}
	return err
}

// viaUSBFS opens the first CCID interface with raw usbfs ioctls and hands
// it to fn as a card.Card (APDUs pass through QEMU's reader verbatim).
func viaUSBFS(inBuf int, fn func(card.Card, string) error) error {
	ifs, err := rawccid.Find("/sys/bus/usb/devices")
	if err != nil {
		return err
	}
	if len(ifs) == 0 {
		return errors.New("no CCID interface")
	}
	r, err := rawccid.Open(ifs[0], inBuf)
	if err != nil {
		return err
	}
	c := rawCard{r}
	err = fn(c, ifs[0].SysName)
	if cerr := c.Close(); err == nil {
		err = cerr
	}
	return err
}

// rawCard is a card.Card over one rawccid reader.
type rawCard struct{ r *rawccid.Reader }

func (c rawCard) ATR() []byte { return c.r.ATR() }

func (c rawCard) Transmit(_ context.Context, apdu []byte) ([]byte, error) {
	resp, err := c.r.XfrBlock(apdu)
	return slices.Clone(resp), err
}

func (c rawCard) Reset(context.Context, card.ResetKind) ([]byte, error) {
	return nil, errors.New("rawccid: no reset")
}

func (c rawCard) Close() error { return c.r.Close() }

// apdu is one benchmarked command: setup (untimed, may be nil) is sent
// once before, check judges every response.
type apdu struct {
	name  string
	setup []byte
	cmd   []byte
	check func(resp []byte) error
}

// bigEF is the content of card/sim's EF 6F99: byte i = i mod 251.
func bigEF(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}

var apdus = []apdu{
	{name: "select-mf", cmd: mustHex("00A4000C023F00"), check: want(nil)},
	{name: "read-10", cmd: mustHex("00B082000A"), check: wantLen(10)},
	{name: "read-256", setup: mustHex("00A4000C026F99"), cmd: mustHex("00B0000000"), check: want(bigEF(256))},
}

func want(data []byte) func([]byte) error {
	full := append(append([]byte(nil), data...), 0x90, 0x00)
	return func(r []byte) error {
		if !bytes.Equal(r, full) {
			return fmt.Errorf("response %X, want %X", r, full)
		}
		return nil
	}
}

func wantLen(n int) func([]byte) error {
	return func(r []byte) error {
		if len(r) != n+2 || !bytes.HasSuffix(r, []byte{0x90, 0x00}) {
			return fmt.Errorf("response %X, want %d bytes and 9000", r, n)
		}
		return nil
	}
}

// run prints the card and times every APDU kind.
func run(ctx context.Context, stack, reader string, c card.Card, n, warm int) error {
	if n < 1 {
		return errors.New("-n must be at least 1")
	}
	fmt.Printf("card %s %q atr %X\n", stack, reader, c.ATR())
	cs, _ := os.ReadFile("/sys/devices/system/clocksource/clocksource0/current_clocksource")
	fmt.Printf("clocksource %s\n", strings.TrimSpace(string(cs)))
	times := make([]time.Duration, n)
	var wall time.Duration
	for _, a := range apdus {
		if a.setup != nil {
			r, err := c.Transmit(ctx, a.setup)
			if err != nil {
				return fmt.Errorf("%s setup: %w", a.name, err)
			}
			if err := want(nil)(r); err != nil {
				return fmt.Errorf("%s setup: %w", a.name, err)
			}
		}
		var cpu0, pcscd0 time.Duration
		for i := range warm + n {
			if i == warm {
				cpu0, pcscd0 = ownCPU(), pcscdCPU()
			}
			start := time.Now()
			r, err := c.Transmit(ctx, a.cmd)
			d := time.Since(start)
			if err != nil {
				return fmt.Errorf("%s #%d: %w", a.name, i, err)
			}
			if err := a.check(r); err != nil {
				return fmt.Errorf("%s #%d: %w", a.name, i, err)
			}
			if i >= warm {
				times[i-warm] = d
				wall += d
			}
		}
		own, other := ownCPU()-cpu0, pcscdCPU()-pcscd0
		s := summarise(times)
		fmt.Printf("result %s %s %d %d %d %d %d %d\n", stack, a.name, n, s.mean, s.p50, s.p99, s.min, s.max)
		fmt.Printf("cpu %s %s %d %d\n", stack, a.name, int64(own)/int64(n), int64(other)/int64(n))
	}
	fmt.Printf("done %s %d\n", stack, wall)
	return nil
}

// ownCPU is this process's CPU time so far (user + system).
func ownCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// clockTick is USER_HZ, the unit of /proc/PID/stat's times (100 on Linux).
const clockTick = 10 * time.Millisecond

// pcscdCPU is the CPU time (user + system) of the running pcscd, 0 when
// there is none.
func pcscdCPU() time.Duration {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		comm, err := os.ReadFile(filepath.Join(d, "comm"))
		if err != nil || strings.TrimSpace(string(comm)) != "pcscd" {
			continue
		}
		stat, err := os.ReadFile(filepath.Join(d, "stat"))
		if err != nil {
			return 0
		}
		// Fields after the ")" that ends comm: state is the 3rd field
		// of the line, utime and stime the 14th and 15th.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			return 0
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 13 {
			return 0
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		s, _ := strconv.ParseInt(f[12], 10, 64)
		return time.Duration(u+s) * clockTick
	}
	return 0
}

// stats are nanoseconds.
type stats struct{ mean, p50, p99, min, max int64 }

// summarise sorts ts in place; the percentiles are nearest-rank.
func summarise(ts []time.Duration) stats {
	slices.Sort(ts)
	var sum time.Duration
	for _, t := range ts {
		sum += t
	}
	rank := func(p float64) time.Duration {
		i := int(p*float64(len(ts))+0.999999) - 1
		return ts[max(0, min(i, len(ts)-1))]
	}
	return stats{
		mean: int64(sum) / int64(len(ts)),
		p50:  int64(rank(0.50)),
		p99:  int64(rank(0.99)),
		min:  int64(ts[0]),
		max:  int64(ts[len(ts)-1]),
	}
}

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}
