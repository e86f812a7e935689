// Command labbench times APDUs on a reader-lab gadget through one host
// stack, with several slots busy at once:
//
//	labbench -host wsrc|libccid -serial S -slots N -n APDUS [-apdu read-256|select]
//
// It opens the cards of the first N slots (our ccid package: the first N
// CardInserted events; pcscd + libccid: the first N readers with a card,
// in name order, which are the slots of a multi-slot reader), then runs
// -n APDUs on each card, all cards at once, and prints
//
//	bench HOST SLOTS APDU N_TOTAL WALL_NS P50_NS
//
// where P50 is the median per-APDU time over all cards. Every response is
// checked; a wrong one ends the run with exit 1.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/ccid"
	"github.com/wsrc-go/wsrc/pcsc"
)

// apdus are the timed commands with the SW they must end in and the
// response length; read-256 reads EF 6F99 (selected before timing).
var apdus = map[string]struct {
	cmd  []byte
	size int
}{
	"select":   {[]byte{0x00, 0xA4, 0x00, 0x0C, 0x02, 0x3F, 0x00}, 2},
	"read-256": {[]byte{0x00, 0xB0, 0x00, 0x00, 0x00}, 258},
}

var selectBig = []byte{0x00, 0xA4, 0x00, 0x0C, 0x02, 0x6F, 0x99}

func main() {
	host := flag.String("host", "wsrc", "wsrc (package ccid) or libccid (pcscd)")
	serial := flag.String("serial", "", "USB serial number of the gadget to wait for")
	slots := flag.Int("slots", 1, "cards used at once")
	n := flag.Int("n", 100, "APDUs per card")
	apdu := flag.String("apdu", "read-256", "select or read-256")
	pcscd := flag.String("pcscd", "/usr/sbin/pcscd", "pcscd binary (-host libccid)")
	timeout := flag.Duration("timeout", 5*time.Minute, "give up after this long")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	a, ok := apdus[*apdu]
	if !ok {
		fmt.Println("error: unknown -apdu", *apdu)
		os.Exit(2)
	}
	run := func(cards []card.Card) error { return bench(ctx, *host, cards, *apdu, a.cmd, a.size, *n) }
	err := waitDevice(ctx, *serial)
	if err == nil {
		switch *host {
		case "wsrc":
			err = viaCCID(ctx, log, *slots, run)
		case "libccid":
			err = viaPCSC(ctx, log, *pcscd, *slots, run)
		default:
			err = fmt.Errorf("unknown host %q", *host)
		}
	}
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
}

// bench runs n APDUs on every card at once.
func bench(ctx context.Context, host string, cards []card.Card, name string, cmd []byte, size, n int) error {
	for _, c := range cards { // untimed: select the EF, warm up
		if _, err := c.Transmit(ctx, selectBig); err != nil {
			return err
		}
		if _, err := c.Transmit(ctx, cmd); err != nil {
			return err
		}
	}
	times := make([][]time.Duration, len(cards))
	errs := make([]error, len(cards))
	var wg sync.WaitGroup
	start := time.Now()
	for i, c := range cards {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range n {
				t := time.Now()
				r, err := c.Transmit(ctx, cmd)
				if err != nil {
					errs[i] = err
					return
				}
				if len(r) != size || !bytes.HasSuffix(r, []byte{0x90, 0x00}) {
					errs[i] = fmt.Errorf("card %d: response of %d bytes ending % X", i, len(r), r[max(0, len(r)-2):])
					return
				}
				times[i] = append(times[i], time.Since(t))
			}
		}()
	}
	wg.Wait()
	wall := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return err
	}
	all := slices.Concat(times...)
	slices.Sort(all)
	fmt.Printf("bench %s %d %s %d %d %d\n", host, len(cards), name, len(all), wall.Nanoseconds(), all[len(all)/2].Nanoseconds())
	return nil
}

// waitDevice polls sysfs until the gadget with the serial is configured.
func waitDevice(ctx context.Context, serial string) error {
	for {
		ms, _ := filepath.Glob("/sys/bus/usb/devices/*/serial")
		for _, m := range ms {
			b, _ := os.ReadFile(m)
			if strings.TrimSpace(string(b)) != serial {
				continue
			}
			if ifs, _ := filepath.Glob(filepath.Join(filepath.Dir(m), "*:1.0", "bInterfaceClass")); len(ifs) > 0 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no USB device with serial %q: %w", serial, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// viaCCID opens the cards of the first n slots through our driver.
func viaCCID(ctx context.Context, log *slog.Logger, n int, fn func([]card.Card) error) error {
	events := make(chan ccid.Event)
	runErr := make(chan error, 1)
	rctx, stop := context.WithCancel(ctx)
	defer func() {
		stop()
		<-runErr
	}()
	go func() { runErr <- ccid.Watch(rctx, ccid.Options{Logger: log}, events) }()
	var cards []card.Card
	defer func() {
		for _, c := range cards {
			c.Close()
		}
	}()
	for len(cards) < n {
		select {
		case ev := <-events:
			if ev.Kind != ccid.CardInserted || ev.Slot >= n {
				continue
			}
			c, err := ev.Open(ctx)
			if err != nil {
				return fmt.Errorf("opening slot %d: %w", ev.Slot, err)
			}
			cards = append(cards, c)
		case err := <-runErr:
			runErr <- err
			return fmt.Errorf("driver stopped: %w", err)
		case <-ctx.Done():
			return fmt.Errorf("%d of %d cards: %w", len(cards), n, ctx.Err())
		}
	}
	return fn(cards)
}

// viaPCSC starts pcscd, opens the first n readers with a card, and stops
// pcscd at the end.
func viaPCSC(ctx context.Context, log *slog.Logger, pcscd string, n int, fn func([]card.Card) error) error {
	cmd := exec.Command(pcscd, "--foreground")
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting pcscd: %w", err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	var mu sync.Mutex
	present := map[string]bool{}
	enough := make(chan struct{})
	wctx, stop := context.WithCancel(ctx)
	watchErr := make(chan error, 1)
	go func() {
		watchErr <- pcsc.Watch(wctx, pcsc.WatchOptions{Logger: log, MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second},
			func(ev pcsc.ReaderEvent) {
				mu.Lock()
				defer mu.Unlock()
				if ev.CardPresent && !ev.Mute && !present[ev.Reader] {
					present[ev.Reader] = true
					if len(present) == n {
						close(enough)
					}
				}
			})
	}()
	select {
	case <-enough:
	case <-ctx.Done():
	}
	stop()
	if err := <-watchErr; err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("watching pcscd: %w", err)
	}
	mu.Lock()
	var readers []string
	for r := range present {
		readers = append(readers, r)
	}
	mu.Unlock()
	if len(readers) < n {
		return fmt.Errorf("%d of %d readers with a card: %w", len(readers), n, ctx.Err())
	}
	slices.Sort(readers)
	var cards []card.Card
	defer func() {
		for _, c := range cards {
			c.Close()
		}
	}()
	for _, r := range readers[:n] {
		c, err := pcsc.Open(ctx, r, pcsc.OpenOptions{})
		if err != nil {
			return err
		}
		cards = append(cards, c)
	}
	return fn(cards)
}
