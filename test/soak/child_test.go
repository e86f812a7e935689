package soak

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/wsrc-go/wsrc/internal/auth"
	"github.com/wsrc-go/wsrc/server"
	"github.com/wsrc-go/wsrc/server/daemon"
)

// The server under test runs in a child process (this test binary again,
// with childEnv set), so that its heap, goroutines and file descriptors
// are its own and not the load generator's.
const childEnv = "WSRC_SOAK_CHILD"

// Accounts of the child's server: a user with a token (the churn: no
// password hashing per connection), a user with a password (the throttle
// test), and no agents, so the card port is open.
const (
	userToken    = "wsrc_soak-token-0000000000000000000000000000000"
	userPassword = "the right password"
)

// headerTimeout is the child's bound on every state before the upgrade,
// as wsrc-server's header_timeout.
const headerTimeout = 10 * time.Second

// serverStats is what the child reports about itself.
type serverStats struct {
	HeapAlloc    uint64 // live heap after a GC, bytes
	Goroutines   int
	FDs          int // open file descriptors
	Open         int // connections between Connected and Disconnected
	PendingUsers int // connections not yet upgraded, user port
	PendingCards int
	Cards        int // listed cards
}

// openCounter is an Observer that counts open connections and lets the
// parent wait until none is left.
type openCounter struct {
	server.NopObserver
	mu   sync.Mutex
	cond *sync.Cond
	open int
}

func (o *openCounter) Connected(server.ConnEvent) {
	o.mu.Lock()
	o.open++
	o.mu.Unlock()
}

func (o *openCounter) Disconnected(server.ConnEvent, string) {
	o.mu.Lock()
	o.open--
	o.cond.Broadcast()
	o.mu.Unlock()
}

// waitAtMost waits until at most n connections are open.
func (o *openCounter) waitAtMost(n int) {
	o.mu.Lock()
	for o.open > n {
		o.cond.Wait()
	}
	o.mu.Unlock()
}

func (o *openCounter) count() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.open
}

// runChild serves the relay as wsrc-server does (its default limits, its
// HTTP servers: daemon.NewHTTPServer, and the connection hooks) on two loopback
// ports, prints "ports USER CARD", then answers each command line on
// stdin with one JSON line: "stats" (after a GC), "wait N" (until at most
// N connections are open, then stats). It returns at EOF.
func runChild() error {
	pw, err := auth.HashPassword(userPassword)
	if err != nil {
		return err
	}
	store, err := auth.NewStore([]auth.User{
		{Name: "soak", TokenHashes: []auth.TokenHash{auth.HashToken(userToken)}, Admin: true},
		{Name: "alice", PasswordHash: pw, AllCards: true},
	}, nil)
	if err != nil {
		return err
	}
	obs := &openCounter{}
	obs.cond = sync.NewCond(&obs.mu)
	srv := server.New(server.Config{Auth: store, Observer: obs, MessageRate: server.DefaultMessageRate},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	errLog := log.New(io.Discard, "", 0) // "accept4: too many open files" would show here
	newHTTP := func(h http.Handler, role string) *http.Server {
		hs := daemon.NewHTTPServer(h, headerTimeout, errLog)
		hs.ConnState = srv.ConnState(role)
		return hs
	}
	ul, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	cl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	us, cs := newHTTP(srv.UserHandler(), server.PortUser), newHTTP(srv.CardHandler(), server.PortCard)
	go us.Serve(ul) //nolint:errcheck // ends when the process does
	go cs.Serve(cl) //nolint:errcheck
	fmt.Printf("ports %d %d\n", ul.Addr().(*net.TCPAddr).Port, cl.Addr().(*net.TCPAddr).Port)
	in := bufio.NewScanner(os.Stdin)
	enc := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var n int
		if _, err := fmt.Sscanf(in.Text(), "wait %d", &n); err == nil {
			obs.waitAtMost(n)
		}
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		fds, _ := os.ReadDir("/proc/self/fd")
		pu, pc := srv.Pending()
		if err := enc.Encode(serverStats{HeapAlloc: ms.HeapAlloc, Goroutines: runtime.NumGoroutine(), FDs: len(fds),
			Open: obs.count(), PendingUsers: pu, PendingCards: pc, Cards: srv.Stats().Cards}); err != nil {
			return err
		}
	}
	return in.Err()
}
