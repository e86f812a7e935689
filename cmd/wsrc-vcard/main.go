// Command wsrc-vcard puts a simulated UICC (card/sim) into a vpcd reader
// slot of the local pcscd, so that PC/SC programs (pcsc_scan, pySim,
// wsrc-agent's PC/SC backend) see a card without hardware. It is a
// developer tool, run by hand; tests use internal/vpcd directly.
//
// It needs pcscd with vsmartcard's vpcd driver (Debian: pcscd,
// vsmartcard-vpcd). The default /etc/reader.conf.d/vpcd makes vpcd listen
// on TCP 35963 for reader "Virtual PCD 00 00" and 35964 for "Virtual PCD
// 00 01":
//
//	wsrc-vcard --iccid 8949440000001155314 --protocol t1 &
//	wsrc-vcard --vpcd 127.0.0.1:35964 --eid - &   # a plain UICC in the second slot
//	pcsc_scan
//
// The card stays inserted until wsrc-vcard exits (SIGINT/SIGTERM);
// when pcscd restarts, wsrc-vcard connects again by itself.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/wsrc-go/wsrc/card/sim"
	"github.com/wsrc-go/wsrc/internal/version"
	"github.com/wsrc-go/wsrc/internal/vpcd"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "wsrc-vcard:", err)
		}
		os.Exit(2)
	}
}

// config is the parsed command line.
type config struct {
	addr    string
	card    sim.Config
	verbose bool
	version bool
}

func parse(args []string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("wsrc-vcard", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.addr, "vpcd", "127.0.0.1:35963", "vpcd `host:port` of the reader slot (35963: first slot, 35964: second)")
	fs.StringVar(&c.card.ICCID, "iccid", sim.DefaultICCID, "ICCID of the simulated card")
	fs.StringVar(&c.card.EID, "eid", sim.DefaultEID, `EID of the simulated eUICC, "-" for a plain UICC without ISD-R`)
	fs.StringVar(&c.card.IMSI, "imsi", sim.DefaultIMSI, "IMSI (only with --usim)")
	fs.BoolVar(&c.card.USIM, "usim", false, "add ADF.USIM with EF.IMSI")
	proto := fs.String("protocol", "t0", "transmission protocol the ATR announces: t0 or t1")
	fs.BoolVar(&c.card.T0GetResponse, "t0-get-response", false, "answer like a real T=0 card (61xx + GET RESPONSE, 6Cxx)")
	fs.BoolVar(&c.verbose, "v", false, "log every connection attempt")
	fs.BoolVar(&c.version, "version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: wsrc-vcard [flags]\n\nServes a simulated UICC to vpcd (vsmartcard) until interrupted.\n\nflags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	switch *proto {
	case "t0", "T0", "T=0":
		c.card.Protocol = sim.T0
	case "t1", "T1", "T=1":
		c.card.Protocol = sim.T1
	default:
		return c, fmt.Errorf("--protocol %q: want t0 or t1", *proto)
	}
	if err := c.card.Validate(); err != nil {
		return c, err
	}
	return c, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parse(args, stderr)
	if err != nil {
		return err
	}
	if c.version {
		fmt.Fprintln(stdout, "wsrc-vcard", version.Version)
		return nil
	}
	level := slog.LevelInfo
	if c.verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	s := sim.New(c.card)
	id := s.Identity()
	log.Info("wsrc-vcard: serving simulated card", "vpcd", c.addr, "protocol", c.card.Protocol,
		"iccid", id.ICCID, "eid", id.EID, "atr", fmt.Sprintf("%x", s.ATR()))
	return vpcd.Run(ctx, c.addr, s, vpcd.RunOptions{Logger: log})
}
