package main

import (
	"context"
	"flag"
	"log/slog"
	"net"
	"net/url"
	"strconv"

	"github.com/wsrc-go/wsrc/client"
	"github.com/wsrc-go/wsrc/internal/vpcdbridge"
)

// vpcdOptions are the flags of `wsrc vpcd` besides the common ones.
type vpcdOptions struct {
	addr  string
	share bool
}

var vpcdCmd = &command{
	name:    "vpcd",
	summary: "show a remote card as a local PC/SC reader (through vsmartcard's vpcd)",
	selects: true,
	flags: func(fs *flag.FlagSet, o *options) {
		o.vpcd = vpcdOptions{addr: vpcdbridge.DefaultVPCD}
		fs.StringVar(&o.vpcd.addr, "vpcd", o.vpcd.addr, "vpcd's `HOST:PORT` for the reader (port 35963 is reader 0, 35964 reader 1, ...)")
		fs.BoolVar(&o.vpcd.share, "share", false, "select the card only while an application has it powered, so that others may use it in between")
	},
	usage: `Usage:
  wsrc vpcd [--vpcd HOST:PORT] (--iccid ICCID | --eid EID | --atr ATR | --id TYPE=VALUE)
            [--share] [--server URL] [--token-file FILE] [--tls-ca-file FILE]

Makes a remote card a card in a local PC/SC reader, for every PC/SC
application on this machine: pcsc_scan, scriptor, opensc-tool, lpac and
EasyLPAC, pySim's -p N, GlobalPlatformPro, ... It needs pcscd with
vsmartcard's vpcd driver (Debian/Ubuntu package vsmartcard-vpcd), which
adds the readers "Virtual PCD 00 00" (port 35963) and "Virtual PCD 00 01"
(port 35964); docs/pcsc-apps.md explains the set-up and other systems.

The card is selected on the server when wsrc vpcd starts and held until it
stops: other users see it associated. With --share it is selected only
while an application has it powered (pcscd powers it off as soon as the
last application disconnects), so that a team can take turns; another user
may then take it between two PC/SC sessions, and it leaves this reader
until it is free again. Each time pcscd powers the card on, and when an
application resets it, the remote card is reset. When the card
or the server goes away, the reader shows no card; wsrc vpcd selects the
card again (forever, with backoff) and it reappears. A card that cannot be
selected (not connected, not allowed for this account, in use) leaves the
reader empty, and the reason is logged on stderr. Stop with Ctrl-C or
SIGTERM; one wsrc vpcd per card, each on its own port.

Credentials, as for every command: user:password@ in --server, or a token:
--token-file, the environment variable WSRC_TOKEN, or the systemd
credential wsrc-token; --tls-ca-file for a private CA.

Examples:
  wsrc vpcd --server wss://relay.example.org:4220/ --iccid 8949440000001155314
  wsrc vpcd --vpcd 127.0.0.1:35964 --eid 89049032123451234512345678901235
  wsrc vpcd --share --id imsi=001010123456790
  pcsc_scan; scriptor -r "Virtual PCD 00 00"; opensc-tool -r 0 --atr
`,
	run: runVPCD,
}

func runVPCD(cl *cli, ctx context.Context, o *options, args []string) error {
	if len(args) > 0 {
		return usagef("vpcd", "no arguments expected, got %q", args[0])
	}
	idType, idStr, err := o.selection("vpcd")
	if err != nil {
		return err
	}
	vo := o.vpcd
	if host, port, err := net.SplitHostPort(vo.addr); err != nil || host == "" {
		return usagef("vpcd", "--vpcd wants HOST:PORT, got %q", vo.addr)
	} else if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return usagef("vpcd", "--vpcd: bad port %q", port)
	}
	opts, err := cl.connOptions(o)
	if err != nil {
		return err
	}
	level := slog.LevelInfo
	if o.verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(cl.stderr, &slog.HandlerOptions{Level: level}))
	if o.verbose {
		opts = append(opts, client.WithLogger(log))
	}
	b, err := vpcdbridge.New(vpcdbridge.Config{
		Server: serverURL(o.server), IDType: idType, IDStr: idStr, VPCD: vo.addr,
		ClientOptions: opts, Logger: log, Share: vo.share,
	})
	if err != nil {
		return usagef("vpcd", "%v", err)
	}
	log.Info("wsrc vpcd: bridging the remote card to vpcd; stop with Ctrl-C", "server", redacted(o.server), "card", idType+"="+idStr, "vpcd", vo.addr, "share", vo.share)
	if err := b.Run(ctx); err != nil {
		return err
	}
	// Run returns when ctx is done: a signal asked us to stop, which for
	// this long-running command is success.
	log.Info("wsrc vpcd: stopped")
	return nil
}

// redacted hides a password in a server URL for logs.
func redacted(s string) string {
	if u, err := url.Parse(serverURL(s)); err == nil {
		return u.Redacted()
	}
	return "(unparsable URL)"
}
