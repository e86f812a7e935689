// Command wsrc-server is the WSRC relay: card agents connect to its card
// port, users (pySim-shell, wsrc, the Go client) to its user port, and it
// relays APDUs between a user and the card it selected. It is a drop-in
// for pySim's contrib/wsrc_server.py: same ports, same flag names, same
// wire protocol (docs/protocol.md). `wsrc-server --help` lists its flags.
//
// This command only wires the process to the daemon, package
// server/daemon: its arguments, standard streams and signals (SIGINT
// and SIGTERM end it, SIGHUP reloads).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/wsrc-go/wsrc/server/daemon"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	code := daemon.Main(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, hup)
	signal.Stop(hup)
	stop()
	os.Exit(code)
}
