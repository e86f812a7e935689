package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/wsrc-go/wsrc/internal/testenv/qemuvm/kmod"
	"github.com/wsrc-go/wsrc/internal/testenv/qemuvm/vmscript"
)

// Polling intervals and limits of the waiting steps. The guest has no
// event to wait on for a USB interface or a listening port, so it polls.
const (
	pollInterval = 50 * time.Millisecond
	untilPause   = 200 * time.Millisecond // between attempts of an until
	stopWait     = 5 * time.Second        // SIGTERM to SIGKILL
)

// runner runs steps in order; it is used from one goroutine.
type runner struct {
	con     *console
	env     []string
	procs   map[string]*proc
	started []string // names in start order, for stopAll

	// seams for tests
	sysUSB     string                  // /sys/bus/usb/devices
	modRoot    string                  // /lib/modules
	loadModule func(path string) error // finit_module
}

// proc is a background process. done is closed by its waiter goroutine
// after it has printed the exit event.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func newRunner(con *console, env []string) *runner {
	if !slices.ContainsFunc(env, func(e string) bool { return strings.HasPrefix(e, "PATH=") }) {
		env = append(env, "PATH=/bin:/usr/bin:/sbin:/usr/sbin")
	}
	return &runner{
		con:        con,
		env:        env,
		procs:      map[string]*proc{},
		sysUSB:     "/sys/bus/usb/devices",
		modRoot:    "/lib/modules",
		loadModule: finitModule,
	}
}

// run runs the steps until one fails and reports whether all passed.
func (r *runner) run(steps []vmscript.Step) bool {
	for _, st := range steps {
		if err := r.step(st); err != nil {
			r.con.event(vmscript.KindFail, strconv.Itoa(st.Line), fmt.Sprintf("%s: %v", st.Op, err))
			return false
		}
	}
	return true
}

func (r *runner) step(st vmscript.Step) error {
	switch st.Op {
	case vmscript.OpModules:
		return r.modules(st.Argv)
	case vmscript.OpEnv:
		key, _, _ := strings.Cut(st.Env, "=")
		r.env = slices.DeleteFunc(r.env, func(e string) bool { return strings.HasPrefix(e, key+"=") })
		r.env = append(r.env, st.Env)
		return nil
	case vmscript.OpWaitUSB:
		return r.waitUSB(st.Count, st.Class, st.Timeout)
	case vmscript.OpWaitTCP:
		return poll(st.Timeout, func() bool {
			c, err := net.DialTimeout("tcp", st.Addr, pollInterval)
			if err == nil {
				c.Close()
			}
			return err == nil
		})
	case vmscript.OpStart:
		return r.start(st.Name, st.Argv)
	case vmscript.OpRun:
		return r.runCmd(st.Name, st.Argv)
	case vmscript.OpUntil:
		return r.until(st)
	case vmscript.OpMark:
		r.con.event(vmscript.KindMark, "", st.Text)
		return nil
	case vmscript.OpSignal:
		p, ok := r.procs[st.Name]
		if !ok {
			return fmt.Errorf("no process %q", st.Name)
		}
		select {
		case <-p.done:
			return fmt.Errorf("process %q has exited", st.Name)
		default:
		}
		return p.cmd.Process.Signal(signals[st.Signal])
	case vmscript.OpStop:
		p, ok := r.procs[st.Name]
		if !ok {
			return fmt.Errorf("no process %q", st.Name)
		}
		stop(p)
		return nil
	}
	return fmt.Errorf("unknown step %q", st.Op)
}

// modules loads names with their dependencies from this kernel's tree.
func (r *runner) modules(names []string) error {
	var uts syscall.Utsname
	if err := syscall.Uname(&uts); err != nil {
		return fmt.Errorf("uname: %w", err)
	}
	var rel []byte
	for _, c := range uts.Release {
		if c == 0 {
			break
		}
		rel = append(rel, byte(c))
	}
	dir := filepath.Join(r.modRoot, string(rel))
	f, err := os.Open(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return err
	}
	ix, err := kmod.ParseDep(f)
	f.Close()
	if err != nil {
		return err
	}
	order, err := ix.Resolve(names...)
	if err != nil {
		return err
	}
	for _, m := range order {
		t := time.Now()
		if err := r.loadModule(filepath.Join(dir, m)); err != nil {
			return fmt.Errorf("loading %s: %w", m, err)
		}
		r.con.event(vmscript.KindLog, "", fmt.Sprintf("loaded %s in %v", kmod.Name(m), time.Since(t).Round(time.Millisecond)))
	}
	return nil
}

// waitUSB polls sysfs until count interfaces of class exist.
func (r *runner) waitUSB(count int, class byte, timeout time.Duration) error {
	want := fmt.Sprintf("%02x", class)
	n := 0
	err := poll(timeout, func() bool {
		ifs, _ := filepath.Glob(filepath.Join(r.sysUSB, "*:*"))
		n = 0
		for _, d := range ifs {
			b, _ := os.ReadFile(filepath.Join(d, "bInterfaceClass"))
			if strings.TrimSpace(string(b)) == want {
				n++
			}
		}
		return n >= count
	})
	if err != nil {
		return fmt.Errorf("%d of %d interfaces of class %s: %w", n, count, want, err)
	}
	r.con.event(vmscript.KindLog, "", fmt.Sprintf("%d USB interfaces of class %s", n, want))
	return nil
}

func (r *runner) command(ctx context.Context, argv []string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = r.env
	cmd.Dir = "/"
	// exec looks argv[0] up in our own PATH, not cmd.Env's.
	if !strings.Contains(argv[0], "/") {
		for _, e := range r.env {
			if dirs, ok := strings.CutPrefix(e, "PATH="); ok {
				for _, d := range filepath.SplitList(dirs) {
					p := filepath.Join(d, argv[0])
					if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
						cmd.Path, cmd.Err = p, nil
						break
					}
				}
			}
		}
	}
	return cmd
}

func (r *runner) start(name string, argv []string) error {
	if _, ok := r.procs[name]; ok {
		return fmt.Errorf("process %q exists", name)
	}
	cmd := r.command(context.Background(), argv)
	out := &lineWriter{con: r.con, name: name}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return err
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	r.procs[name] = p
	r.started = append(r.started, name)
	go func() {
		defer close(p.done)
		err := cmd.Wait()
		out.flush()
		r.con.event(vmscript.KindExit, name, exitText(err))
	}()
	return nil
}

// runCmd runs argv to its end, streaming its output. A non-zero exit is
// reported, not a failure: the test judges it.
func (r *runner) runCmd(name string, argv []string) error {
	cmd := r.command(context.Background(), argv)
	out := &lineWriter{con: r.con, name: name}
	cmd.Stdout, cmd.Stderr = out, out
	err := cmd.Run()
	out.flush()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		return err
	}
	r.con.event(vmscript.KindExit, name, exitText(err))
	return nil
}

// until reruns the command until its output matches (or stops matching);
// it prints the last attempt's output and exit either way.
func (r *runner) until(st vmscript.Step) error {
	deadline := time.Now().Add(st.Timeout)
	for attempt := 1; ; attempt++ {
		// An attempt may outlive the deadline (by at most the timeout
		// again), so that the last one runs in full and is reported.
		ctx, cancel := context.WithTimeout(context.Background(), st.Timeout)
		cmd := r.command(ctx, st.Argv)
		var buf bytes.Buffer
		cmd.Stdout, cmd.Stderr = &buf, &buf
		err := cmd.Run()
		cancel()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) && ctx.Err() == nil {
			return err
		}
		ok := st.Pattern.Match(buf.Bytes()) == st.Match
		if ok || !time.Now().Before(deadline) {
			out := &lineWriter{con: r.con, name: st.Name}
			out.Write(buf.Bytes())
			out.flush()
			r.con.event(vmscript.KindExit, st.Name, exitText(err))
			if !ok {
				return fmt.Errorf("%s: no %s for %q after %d attempts in %v", st.Name, map[bool]string{true: "match", false: "mismatch"}[st.Match], st.Pattern, attempt, st.Timeout)
			}
			r.con.event(vmscript.KindLog, "", fmt.Sprintf("until %s: attempt %d", st.Name, attempt))
			return nil
		}
		time.Sleep(min(untilPause, time.Until(deadline)))
	}
}

// stopAll stops the background processes, last started first.
func (r *runner) stopAll() {
	for _, name := range slices.Backward(r.started) {
		stop(r.procs[name])
	}
}

// signals are the signal step's signals (vmscript.Signals).
var signals = map[string]syscall.Signal{"HUP": syscall.SIGHUP, "INT": syscall.SIGINT, "USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2}

// stop sends SIGTERM, then SIGKILL after stopWait, and waits for the exit.
func stop(p *proc) {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(stopWait)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		p.cmd.Process.Kill()
		<-p.done
	}
}

func exitText(err error) string {
	if err == nil {
		return "0"
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ee.Exited() {
			return strconv.Itoa(ee.ExitCode())
		}
		return ee.ProcessState.String() // "signal: killed"
	}
	return err.Error()
}

// poll calls ok every pollInterval until it returns true or timeout passes.
func poll(timeout time.Duration, ok func() bool) error {
	deadline := time.Now().Add(timeout)
	for {
		if ok() {
			return nil
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("timed out after %v", timeout)
		}
		time.Sleep(pollInterval)
	}
}
