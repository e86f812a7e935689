package relaybench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/wsrc-go/wsrc/server"
)

// ServerStats is what the server child reports about itself.
type ServerStats struct {
	CPU        time.Duration // user + system CPU time of the process
	Mallocs    uint64        // cumulative heap allocations
	HeapInuse  uint64
	StackInuse uint64
	RSS        uint64 // resident set size, bytes
	Goroutines int
}

// ServeChild runs the relay server in this process for the benchmark's
// parent: it listens on two free loopback ports, prints "ports USER CARD",
// then answers each line on in ("stats", "gc") with one JSON line on out,
// until in reaches EOF.
func ServeChild(in io.Reader, out io.Writer) error {
	raiseFileLimit()
	floor := os.Getenv(floorEnv) == "1"
	if path := os.Getenv("WSRC_BENCH_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	srv := server.New(server.Config{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ul, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	cl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	us := &http.Server{Handler: srv.UserHandler()}
	cs := &http.Server{Handler: srv.CardHandler()}
	floorDone := make(chan struct{})
	if floor {
		go func() { defer close(floorDone); serveFloor(ul, cl) }()
	} else {
		close(floorDone)
		go us.Serve(ul) //nolint:errcheck // ends when the listener closes below
		go cs.Serve(cl) //nolint:errcheck
	}
	fmt.Fprintf(out, "ports %d %d\n", ul.Addr().(*net.TCPAddr).Port, cl.Addr().(*net.TCPAddr).Port)

	sc := bufio.NewScanner(in)
	enc := json.NewEncoder(out)
	for sc.Scan() {
		switch sc.Text() {
		case "gc":
			runtime.GC()
			debug.FreeOSMemory()
			fallthrough
		case "stats":
			if err := enc.Encode(selfStats()); err != nil {
				return err
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	us.Close()
	cs.Close()
	if floor {
		ul.Close()
		cl.Close()
		<-floorDone
	}
	return srv.Shutdown(ctx)
}

func selfStats() ServerStats {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ServerStats{
		CPU:        time.Duration(ru.Utime.Nano() + ru.Stime.Nano()),
		Mallocs:    ms.Mallocs,
		HeapInuse:  ms.HeapInuse,
		StackInuse: ms.StackInuse,
		RSS:        rss(),
		Goroutines: runtime.NumGoroutine(),
	}
}

// rss reads VmRSS from /proc/self/status.
func rss() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseUint(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// raiseFileLimit lifts the soft open-files limit to the hard one: the idle
// scenario holds 10 000 connections on each side.
func raiseFileLimit() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

// floorEnv, set to 1 in the child's environment, makes it run the floor
// relay instead of wsrc-server.
const floorEnv = "WSRC_BENCH_FLOOR"

// serverProc is the parent's handle on the server child.
type serverProc struct {
	cmd      *exec.Cmd
	in       io.WriteCloser
	out      *bufio.Reader
	userURL  string
	cardURL  string
	userAddr string
	cardAddr string
	finished chan error
}

// startServer re-executes self with args (which must make it call
// ServeChild) and reads the ports it listens on.
func startServer(self string, env []string, args ...string) (*serverProc, error) {
	cmd := exec.Command(self, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting server child: %w", err)
	}
	p := &serverProc{cmd: cmd, in: in, out: bufio.NewReader(outPipe), finished: make(chan error, 1)}
	line, err := p.out.ReadString('\n')
	if err != nil {
		p.stop()
		return nil, fmt.Errorf("reading server ports: %w", err)
	}
	var up, cp int
	if _, err := fmt.Sscanf(line, "ports %d %d", &up, &cp); err != nil {
		p.stop()
		return nil, fmt.Errorf("server child said %q: %w", line, err)
	}
	p.userAddr = fmt.Sprintf("127.0.0.1:%d", up)
	p.cardAddr = fmt.Sprintf("127.0.0.1:%d", cp)
	p.userURL = "ws://" + p.userAddr + "/"
	p.cardURL = "ws://" + p.cardAddr + "/"
	return p, nil
}

func (p *serverProc) query(cmd string) (ServerStats, error) {
	var s ServerStats
	if _, err := fmt.Fprintln(p.in, cmd); err != nil {
		return s, err
	}
	line, err := p.out.ReadBytes('\n')
	if err != nil {
		return s, err
	}
	return s, json.Unmarshal(line, &s)
}

func (p *serverProc) stop() error {
	p.in.Close()
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		return <-done
	}
}
