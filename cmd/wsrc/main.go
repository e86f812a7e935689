// Command wsrc uses smart cards in remote readers through a WSRC server:
// it lists the cards the server knows, sends APDUs to one, resets it, or
// opens an interactive APDU shell on it. It speaks the user side of the
// protocol through package client, so it works with pySim's server too.
//
// Run `wsrc --help` for the commands, flags and exit codes; cli.go holds
// the command logic, this file only wires it to the process.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// After the first signal, a second one kills as usual.
	context.AfterFunc(ctx, stop)
	cl := &cli{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv}
	code := cl.run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}
