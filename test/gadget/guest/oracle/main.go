// Command oracle runs the reader lab's APDU script (lab.Script) in the
// test VM through one host stack, on the first card of the gadget reader
// whose USB serial number is -serial:
//
//	-host wsrc     the project's ccid package (gousb, libusb), no pcscd
//	-host libccid  Debian's pcscd + libccid, through the pcsc package;
//	               oracle starts pcscd once the reader is there and stops
//	               it at the end, which releases the reader
//
// With -fault (unplug, removal, mute) it runs that fault scenario instead
// of the script, against a gadget started with the matching fault flags,
// and prints "fault WHAT key=value ..." lines (see faultCCID, faultPCSC).
//
// Output: "step NAME RESULT" per script step (lab.Step), then "done".
// Exit status 1 when the card could not be reached at all.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/ccid"
	"github.com/wsrc-go/wsrc/pcsc"
	"github.com/wsrc-go/wsrc/test/gadget/internal/lab"
)

func main() {
	host := flag.String("host", "wsrc", "wsrc (package ccid) or libccid (pcscd)")
	name := flag.String("profile", "", "lab profile of the gadget")
	serial := flag.String("serial", "", "USB serial number of the gadget to wait for")
	pcscd := flag.String("pcscd", "/usr/sbin/pcscd", "pcscd binary (-host libccid)")
	timeout := flag.Duration("timeout", 2*time.Minute, "give up after this long")
	fault := flag.String("fault", "", "run a fault scenario: unplug, removal, mute, abort, wtx, replug, stall")
	flag.Parse()
	p, ok := lab.Find(*name)
	if !ok {
		fmt.Fprintf(os.Stderr, "oracle: no profile %q\n", *name)
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	script := func(c card.Card) {
		for _, s := range lab.Script(ctx, c, p.Extended()) {
			fmt.Println(s.Line())
		}
	}
	err := waitDevice(ctx, *serial)
	if err == nil {
		switch {
		case *fault != "" && *host == "wsrc":
			err = faultCCID(ctx, log, *fault)
		case *fault != "" && *host == "libccid":
			err = viaPCSC(ctx, log, *pcscd, func(c card.Card) { faultPCSC(ctx, c, *fault) })
		case *host == "wsrc":
			err = viaCCID(ctx, log, script)
		case *host == "libccid":
			err = viaPCSC(ctx, log, *pcscd, script)
		default:
			err = fmt.Errorf("unknown host %q", *host)
		}
	}
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println("done")
}

// waitDevice polls sysfs until a USB device with the serial number is
// enumerated with its configuration set.
func waitDevice(ctx context.Context, serial string) error {
	for {
		ms, _ := filepath.Glob("/sys/bus/usb/devices/*/serial")
		for _, m := range ms {
			b, _ := os.ReadFile(m)
			if strings.TrimSpace(string(b)) != serial {
				continue
			}
			ifs, _ := filepath.Glob(filepath.Join(filepath.Dir(m), "*:1.0", "bInterfaceClass"))
			if len(ifs) > 0 {
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

// viaCCID runs the driver until the first card is inserted, runs fn on
// it, and releases the reader again.
func viaCCID(ctx context.Context, log *slog.Logger, fn func(card.Card)) error {
	events := make(chan ccid.Event)
	runErr := make(chan error, 1)
	rctx, stop := context.WithCancel(ctx)
	defer func() {
		stop()
		<-runErr
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
			fn(c)
			return c.Close()
		case err := <-runErr:
			runErr <- err
			return fmt.Errorf("driver stopped: %w", err)
		case <-ctx.Done():
			return fmt.Errorf("no card: %w", ctx.Err())
		}
	}
}

// viaPCSC starts pcscd, waits for a reader with a card, runs fn on it
// (exclusive connection), and stops pcscd.
func viaPCSC(ctx context.Context, log *slog.Logger, pcscd string, fn func(card.Card)) error {
	cmd := exec.Command(pcscd, "--foreground")
	if os.Getenv("ORACLE_PCSCD_DEBUG") == "1" {
		cmd.Args = append(cmd.Args, "--debug")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting pcscd: %w", err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}()
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
	if err := <-watchErr; err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("watching pcscd: %w", err)
	}
	if reader == "" {
		return fmt.Errorf("no card in any pcscd reader: %w", ctx.Err())
	}
	c, err := pcsc.Open(ctx, reader, pcsc.OpenOptions{})
	if err != nil {
		return err
	}
	fn(c)
	return c.Close()
}

// APDUs of the fault scenarios.
var (
	selectMF   = []byte{0x00, 0xA4, 0x00, 0x0C, 0x02, 0x3F, 0x00}
	readICCID  = []byte{0x00, 0xB0, 0x82, 0x00, 0x0A}
	faultStart = time.Now()
)

// report prints one fault line with the time since start in ms.
func report(what string, kv ...any) {
	var b strings.Builder
	fmt.Fprintf(&b, "fault %s t=%d", what, time.Since(faultStart).Milliseconds())
	for i := 0; i+1 < len(kv); i += 2 {
		v := fmt.Sprint(kv[i+1])
		fmt.Fprintf(&b, " %s=%s", kv[i], strings.ReplaceAll(v, " ", "_"))
	}
	fmt.Println(b.String())
}

// faultCCID runs a fault scenario through our driver:
//
//	unplug   one APDU, then a second one during which the gadget exits:
//	         "fault transmit removed=BOOL ms=N", "fault reader-removed ms=N"
//	removal  one APDU after which the gadget takes the card out and puts
//	         it back: "fault card-removed", "fault after-removal removed=BOOL",
//	         "fault card-inserted", "fault reinserted sw=HEX"
//	mute     one APDU to a mute card: "fault transmit mute=BOOL ms=N"
//	stall    one APDU, then a second one for which the reader halts
//	         bulk-in: "fault transmit failed=BOOL ms=N", then the card
//	         as the driver brings the reader back: "fault card-inserted",
//	         "fault recovered sw=HEX"
//	abort    one APDU to a slow card (3 s) under a 1 s deadline, which the
//	         driver aborts; then the same APDU without deadline:
//	         "fault cancelled deadline=BOOL ms=N", "fault after sw=HEX"
//	wtx      one APDU that the card works on for a few seconds while the
//	         reader sends time extensions: "fault transmit sw=HEX ms=N"
//	replug   one APDU, then a second one during which the gadget unplugs
//	         and plugs in again a second later; the driver rescans only
//	         on netlink uevents (RescanInterval one hour): "fault transmit",
//	         "fault reader-removed", "fault card-inserted ms=N",
//	         "fault reinserted sw=HEX"
func faultCCID(ctx context.Context, log *slog.Logger, fault string) error {
	raw := make(chan ccid.Event)
	events := make(chan ccid.Event, 64)
	runErr := make(chan error, 1)
	rctx, stop := context.WithCancel(ctx)
	fwdDone := make(chan struct{})
	defer func() {
		stop()
		<-runErr
		<-fwdDone
	}()
	opts := ccid.Options{Logger: log}
	if fault == "replug" {
		// Only a netlink uevent can bring the reader back in time.
		opts.RescanInterval = time.Hour
	}
	go func() { runErr <- ccid.Watch(rctx, opts, raw) }()
	go func() { // keeps the driver's sends from ever waiting on us
		defer close(fwdDone)
		for {
			select {
			case ev := <-raw:
				select {
				case events <- ev:
				default:
				}
			case <-rctx.Done():
				return
			}
		}
	}()
	wait := func(kind ccid.EventKind, d time.Duration) (ccid.Event, error) {
		t := time.NewTimer(d)
		defer t.Stop()
		for {
			select {
			case ev := <-events:
				if ev.Kind == kind {
					return ev, nil
				}
			case <-t.C:
				return ccid.Event{}, fmt.Errorf("no %v within %v", kind, d)
			case <-ctx.Done():
				return ccid.Event{}, ctx.Err()
			}
		}
	}
	ev, err := wait(ccid.CardInserted, time.Minute)
	if err != nil {
		return err
	}
	c, err := ev.Open(ctx)
	if err != nil {
		return fmt.Errorf("opening the card: %w", err)
	}
	defer c.Close()
	switch fault {
	case "unplug":
		if _, err := c.Transmit(ctx, selectMF); err != nil {
			return fmt.Errorf("first APDU: %w", err)
		}
		t0 := time.Now()
		_, err := c.Transmit(ctx, readICCID)
		report("transmit", "removed", errors.Is(err, card.ErrRemoved), "ms", time.Since(t0).Milliseconds(), "err", err)
		if _, err := wait(ccid.ReaderRemoved, 20*time.Second); err != nil {
			report("reader-removed", "err", err)
		} else {
			report("reader-removed", "ms", time.Since(t0).Milliseconds())
		}
	case "removal":
		if _, err := c.Transmit(ctx, selectMF); err != nil {
			return fmt.Errorf("first APDU: %w", err)
		}
		t0 := time.Now()
		if _, err := wait(ccid.CardRemoved, 20*time.Second); err != nil {
			report("card-removed", "err", err)
			return nil
		}
		report("card-removed", "ms", time.Since(t0).Milliseconds())
		_, err := c.Transmit(ctx, readICCID)
		report("after-removal", "removed", errors.Is(err, card.ErrRemoved), "err", err)
		ev, err := wait(ccid.CardInserted, 20*time.Second)
		if err != nil {
			report("card-inserted", "err", err)
			return nil
		}
		report("card-inserted", "ms", time.Since(t0).Milliseconds())
		c2, err := ev.Open(ctx)
		if err != nil {
			report("reinserted", "err", err)
			return nil
		}
		defer c2.Close()
		r, err := c2.Transmit(ctx, selectMF)
		report("reinserted", "sw", fmt.Sprintf("%x", r), "err", err)
	case "mute":
		t0 := time.Now()
		_, err := c.Transmit(ctx, selectMF)
		report("transmit", "mute", errors.Is(err, card.ErrMute), "ms", time.Since(t0).Milliseconds(), "err", err)
	case "stall":
		if _, err := c.Transmit(ctx, selectMF); err != nil {
			return fmt.Errorf("first APDU: %w", err)
		}
		t0 := time.Now()
		_, err := c.Transmit(ctx, readICCID)
		report("transmit", "failed", err != nil, "removed", errors.Is(err, card.ErrRemoved), "ms", time.Since(t0).Milliseconds(), "err", err)
		ev, err := wait(ccid.CardInserted, 30*time.Second)
		if err != nil {
			report("card-inserted", "err", err)
			return nil
		}
		report("card-inserted", "ms", time.Since(t0).Milliseconds())
		c2, err := ev.Open(ctx)
		if err != nil {
			report("recovered", "err", err)
			return nil
		}
		defer c2.Close()
		r, err := c2.Transmit(ctx, selectMF)
		report("recovered", "sw", fmt.Sprintf("%x", r), "err", err)
	case "abort":
		actx, cancel := context.WithTimeout(ctx, time.Second)
		t0 := time.Now()
		_, err := c.Transmit(actx, selectMF)
		cancel()
		report("cancelled", "deadline", errors.Is(err, context.DeadlineExceeded), "ms", time.Since(t0).Milliseconds(), "err", err)
		t0 = time.Now()
		r, err := c.Transmit(ctx, selectMF)
		report("after", "sw", fmt.Sprintf("%x", r), "ms", time.Since(t0).Milliseconds(), "err", err)
	case "wtx":
		t0 := time.Now()
		r, err := c.Transmit(ctx, selectMF)
		report("transmit", "sw", fmt.Sprintf("%x", r), "ms", time.Since(t0).Milliseconds(), "err", err)
	case "replug":
		if _, err := c.Transmit(ctx, selectMF); err != nil {
			return fmt.Errorf("first APDU: %w", err)
		}
		t0 := time.Now()
		_, err := c.Transmit(ctx, readICCID)
		report("transmit", "removed", errors.Is(err, card.ErrRemoved), "ms", time.Since(t0).Milliseconds(), "err", err)
		if _, err := wait(ccid.ReaderRemoved, 20*time.Second); err != nil {
			report("reader-removed", "err", err)
			return nil
		}
		report("reader-removed", "ms", time.Since(t0).Milliseconds())
		ev, err := wait(ccid.CardInserted, 30*time.Second)
		if err != nil {
			report("card-inserted", "err", err)
			return nil
		}
		report("card-inserted", "ms", time.Since(t0).Milliseconds())
		c2, err := ev.Open(ctx)
		if err != nil {
			report("reinserted", "err", err)
			return nil
		}
		defer c2.Close()
		r, err := c2.Transmit(ctx, selectMF)
		report("reinserted", "sw", fmt.Sprintf("%x", r), "err", err)
	default:
		return fmt.Errorf("unknown fault %q", fault)
	}
	return nil
}

// faultPCSC runs the mute and wtx scenarios through pcscd + libccid:
// "fault transmit failed=BOOL ms=N" (mute), "fault transmit sw=HEX ms=N"
// (wtx).
func faultPCSC(ctx context.Context, c card.Card, fault string) {
	t0 := time.Now()
	switch fault {
	case "mute":
		_, err := c.Transmit(ctx, selectMF)
		report("transmit", "failed", err != nil, "mute", errors.Is(err, card.ErrMute), "ms", time.Since(t0).Milliseconds(), "err", err)
	case "wtx":
		r, err := c.Transmit(ctx, selectMF)
		report("transmit", "sw", fmt.Sprintf("%x", r), "ms", time.Since(t0).Milliseconds(), "err", err)
	default:
		report("unsupported", "fault", fault)
	}
}
