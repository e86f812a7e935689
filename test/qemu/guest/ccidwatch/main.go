// Command ccidwatch is the guest program of the CCID driver test: it runs
// the project's ccid package (gousb over libusb, so it is linked
// dynamically) against QEMU's emulated readers and prints, one line each:
//
//	reader <status> <name> <reason>     a reader found, claimed or not
//	inserted <name>/<slot> atr <hex>    a card came and was powered up
//	identified <name>/<slot> iccid=<ICCID> eid=<EID>
//	apdu <name>/<slot> <hex>            the answer to SELECT MF
//	reset <name>/<slot> atr <hex>       after a cold reset, then SELECT MF again
//	removed <name>/<slot>               a card left
//	count <n>                           after every identification
//
// It exits 0 once -identify cards have been identified (re-insertions
// count again), 1 on an error or when -timeout passes first.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/ccid"
)

func main() {
	want := flag.Int("identify", 1, "exit after this many identifications")
	timeout := flag.Duration("timeout", time.Minute, "give up after this long")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if err := watch(ctx, log, *want); err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
}

func watch(ctx context.Context, log *slog.Logger, want int) error {
	d, err := ccid.New(ccid.Options{Logger: log})
	if err != nil {
		return err
	}
	defer d.Close()
	events := make(chan ccid.Event)
	runErr := make(chan error, 1)
	rctx, stop := context.WithCancel(ctx)
	defer func() {
		stop()
		<-runErr
	}()
	go func() { runErr <- d.Run(rctx, events) }()

	n := 0
	for {
		var ev ccid.Event
		select {
		case ev = <-events:
		case err := <-runErr:
			runErr <- err // for the deferred wait
			return fmt.Errorf("driver stopped: %w", err)
		case <-ctx.Done():
			return fmt.Errorf("after %d identifications: %w", n, ctx.Err())
		}
		where := fmt.Sprintf("%s/%d", ev.Reader.Name, ev.Slot)
		switch ev.Kind {
		case ccid.ReaderAdded:
			fmt.Printf("reader %s %s %s\n", ev.Reader.Status, ev.Reader.Name, ev.Reader.Reason)
		case ccid.CardRemoved:
			fmt.Printf("removed %s\n", where)
		case ccid.CardInserted:
			if err := identify(ctx, ev, where); err != nil {
				return fmt.Errorf("%s: %w", where, err)
			}
			n++
			fmt.Printf("count %d\n", n)
			if n >= want {
				return nil
			}
		}
	}
}

// identify opens the card, prints its ATR, identity and the answer to
// SELECT MF, resets it and selects again, and closes it.
func identify(ctx context.Context, ev ccid.Event, where string) error {
	c, err := ev.Open(ctx)
	if err != nil {
		return fmt.Errorf("opening: %w", err)
	}
	defer c.Close()
	fmt.Printf("inserted %s atr %X\n", where, c.ATR())
	id, err := card.Identify(ctx, c)
	if err != nil {
		return fmt.Errorf("identifying: %w", err)
	}
	fmt.Printf("identified %s iccid=%s eid=%s\n", where, id.ICCID, id.EID)
	resp, err := c.Transmit(ctx, []byte{0x00, 0xA4, 0x00, 0x0C, 0x02, 0x3F, 0x00})
	if err != nil {
		return fmt.Errorf("SELECT MF: %w", err)
	}
	fmt.Printf("apdu %s %X\n", where, resp)
	atr, err := c.Reset(ctx, card.ColdReset)
	if err != nil {
		return fmt.Errorf("reset: %w", err)
	}
	fmt.Printf("reset %s atr %X\n", where, atr)
	if resp, err = c.Transmit(ctx, []byte{0x00, 0xA4, 0x00, 0x0C, 0x02, 0x3F, 0x00}); err != nil {
		return fmt.Errorf("SELECT MF after reset: %w", err)
	}
	fmt.Printf("apdu %s %X\n", where, resp)
	return nil
}
