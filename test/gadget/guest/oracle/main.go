// Command oracle runs the reader lab's APDU script (lab.Script) in the
// test VM through one host stack, on the first card of the gadget reader
// whose USB serial number is -serial:
//
//	-host wsrc     the project's ccid package (gousb, libusb), no pcscd
//	-host libccid  Debian's pcscd + libccid, through the pcsc package;
//	               oracle starts pcscd once the reader is there and stops
//	               it at the end, which releases the reader
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
		switch *host {
		case "wsrc":
			err = viaCCID(ctx, log, script)
		case "libccid":
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
