package main

import (
	"bytes"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/wsrc-go/wsrc/internal/testenv/qemuvm/vmscript"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// syncBuffer is a console sink that tests read after the runner is done.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) events(t *testing.T) []vmscript.Event {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var evs []vmscript.Event
	for _, l := range strings.Split(s.b.String(), "\n") {
		if l == "" {
			continue
		}
		e, ok := vmscript.ParseEvent(l)
		if !ok {
			t.Fatalf("console line %q is no event", l)
		}
		evs = append(evs, e)
	}
	return evs
}

// runScript runs src with a fresh runner and returns the events.
func runScript(t *testing.T, src string, setup func(r *runner)) ([]vmscript.Event, bool) {
	t.Helper()
	steps, err := vmscript.Parse(src)
	if err != nil {
		t.Fatal(err)
	}
	var out syncBuffer
	r := newRunner(newConsole(&out), []string{"PATH=/usr/bin:/bin", "KEEP=1"})
	if setup != nil {
		setup(r)
	}
	ok := r.run(steps)
	r.stopAll()
	return out.events(t), ok
}

func has(evs []vmscript.Event, want vmscript.Event) bool { return slices.Contains(evs, want) }

func TestRunEnvMark(t *testing.T) {
	evs, ok := runScript(t, `
env GREETING=hello
env "GREETING=hello world"
run greet sh -c "echo $GREETING $KEEP; echo err >&2; printf tail"
run fail sh -c "exit 3"
mark "all done"
`, nil)
	if !ok {
		t.Fatalf("script failed: %v", evs)
	}
	for _, want := range []vmscript.Event{
		{Kind: vmscript.KindOut, Name: "greet", Text: "hello world 1"},
		{Kind: vmscript.KindOut, Name: "greet", Text: "err"},
		{Kind: vmscript.KindOut, Name: "greet", Text: "tail"},
		{Kind: vmscript.KindExit, Name: "greet", Text: "0"},
		{Kind: vmscript.KindExit, Name: "fail", Text: "3"},
		{Kind: vmscript.KindMark, Text: "all done"},
	} {
		if !has(evs, want) {
			t.Errorf("missing %v in %v", want, evs)
		}
	}
}

func TestUntil(t *testing.T) {
	dir := t.TempDir()
	counter := filepath.Join(dir, "n")
	// Each attempt counts itself; the third one matches.
	cmd := `n=$(cat ` + counter + ` 2>/dev/null || echo 0); n=$((n+1)); echo $n > ` + counter + `; echo attempt $n`
	evs, ok := runScript(t, `until count 30s match "attempt 3" sh -c "`+cmd+`"`, nil)
	if !ok {
		t.Fatalf("until failed: %v", evs)
	}
	if !has(evs, vmscript.Event{Kind: vmscript.KindOut, Name: "count", Text: "attempt 3"}) ||
		has(evs, vmscript.Event{Kind: vmscript.KindOut, Name: "count", Text: "attempt 2"}) {
		t.Fatalf("want only the last attempt's output: %v", evs)
	}

	evs, ok = runScript(t, "until never 300ms match nothing-like-this echo something\nmark unreachable\n", nil)
	if ok || evs[len(evs)-1].Kind != vmscript.KindFail || evs[len(evs)-1].Name != "1" {
		t.Fatalf("until that never matches: ok=%v %v", ok, evs)
	}
	if has(evs, vmscript.Event{Kind: vmscript.KindMark, Text: "unreachable"}) {
		t.Fatal("the script went on after a failed step")
	}
	if !has(evs, vmscript.Event{Kind: vmscript.KindOut, Name: "never", Text: "something"}) {
		t.Fatalf("the last attempt's output is missing: %v", evs)
	}

	evs, ok = runScript(t, `until gone 30s nomatch present echo absent`, nil)
	if !ok {
		t.Fatalf("nomatch: %v", evs)
	}
}

func TestStartStop(t *testing.T) {
	ready := filepath.Join(t.TempDir(), "ready")
	evs, ok := runScript(t, `
start sleeper sh -c "echo up; echo up > `+ready+`; exec sleep 60"
until ready 30s match up cat `+ready+`
stop sleeper
start again sleep 60
`, nil)
	if !ok {
		t.Fatalf("script failed: %v", evs)
	}
	for _, want := range []vmscript.Event{
		{Kind: vmscript.KindOut, Name: "sleeper", Text: "up"},
		{Kind: vmscript.KindExit, Name: "sleeper", Text: "signal: terminated"},
		{Kind: vmscript.KindExit, Name: "again", Text: "signal: terminated"}, // by stopAll
	} {
		if !has(evs, want) {
			t.Errorf("missing %v in %v", want, evs)
		}
	}
}

func TestSignal(t *testing.T) {
	dir := t.TempDir()
	ready, got := filepath.Join(dir, "ready"), filepath.Join(dir, "got")
	evs, ok := runScript(t, `
start trapper sh -c "trap 'echo usr1 > `+got+`' USR1; echo up > `+ready+`; while :; do sleep 0.05; done"
until ready 30s match up cat `+ready+`
signal trapper USR1
until got 30s match usr1 cat `+got+`
`, nil)
	if !ok {
		t.Fatalf("the signal did not arrive: %v", evs)
	}
}

func TestStepErrors(t *testing.T) {
	for _, src := range []string{
		"run x /nonexistent/binary",
		"start x /nonexistent/binary",
		"start x sleep 60\nstart x sleep 60",
		"stop nobody",
		"signal nobody USR1",
		"run x true\nsignal x USR1",
		"wait-tcp 127.0.0.1:1 200ms",
		"modules no-such-module",
	} {
		evs, ok := runScript(t, src, func(r *runner) { r.modRoot = t.TempDir() })
		if ok || !slices.ContainsFunc(evs, func(e vmscript.Event) bool { return e.Kind == vmscript.KindFail }) {
			t.Errorf("%q: ok=%v, events %v", src, ok, evs)
		}
	}
}

func TestWaitTCP(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if evs, ok := runScript(t, "wait-tcp "+l.Addr().String()+" 10s", nil); !ok {
		t.Fatalf("wait-tcp on a listening port: %v", evs)
	}
}

func TestWaitUSB(t *testing.T) {
	sys := t.TempDir()
	for name, class := range map[string]string{"1-1:1.0": "0b", "1-2:1.0": "0b", "1-3:1.0": "03", "usb1": ""} {
		if err := os.MkdirAll(filepath.Join(sys, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if class != "" {
			os.WriteFile(filepath.Join(sys, name, "bInterfaceClass"), []byte(class+"\n"), 0o644)
		}
	}
	set := func(r *runner) { r.sysUSB = sys }
	if evs, ok := runScript(t, "wait-usb 2 0b 10s", set); !ok {
		t.Fatalf("two CCID interfaces: %v", evs)
	}
	if evs, ok := runScript(t, "wait-usb 3 0b 200ms", set); ok {
		t.Fatalf("three CCID interfaces found: %v", evs)
	}
}

func TestModules(t *testing.T) {
	var uts syscall.Utsname
	if err := syscall.Uname(&uts); err != nil {
		t.Fatal(err)
	}
	var rel []byte
	for _, c := range uts.Release {
		if c == 0 {
			break
		}
		rel = append(rel, byte(c))
	}
	root := t.TempDir()
	dir := filepath.Join(root, string(rel))
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "modules.dep"), []byte("k/xhci-pci.ko: k/usbcore.ko\nk/usbcore.ko:\nk/broken.ko:\n"), 0o644)
	var loaded []string
	set := func(r *runner) {
		r.modRoot = root
		r.loadModule = func(p string) error {
			if strings.HasSuffix(p, "broken.ko") {
				return errors.New("exec format error")
			}
			loaded = append(loaded, strings.TrimPrefix(p, dir+"/"))
			return nil
		}
	}
	if evs, ok := runScript(t, "modules xhci_pci", set); !ok {
		t.Fatalf("modules: %v", evs)
	}
	if want := []string{"k/usbcore.ko", "k/xhci-pci.ko"}; !slices.Equal(loaded, want) {
		t.Fatalf("loaded %v, want %v", loaded, want)
	}
	if evs, ok := runScript(t, "modules broken", set); ok {
		t.Fatalf("a module that fails to load: %v", evs)
	}
}

func TestConsoleLongLine(t *testing.T) {
	var out syncBuffer
	w := &lineWriter{con: newConsole(&out), name: "x"}
	w.Write(bytes.Repeat([]byte("a"), 70*1024))
	w.Write([]byte("b\n"))
	evs := out.events(t)
	if len(evs) != 2 || len(evs[0].Text) != 70*1024 || evs[1].Text != "b" {
		t.Fatalf("got %d events", len(evs))
	}
}

func TestExitTextTimeout(t *testing.T) {
	// An until attempt that outlives the deadline is killed, not waited for.
	start := time.Now()
	evs, ok := runScript(t, "until slow 300ms match never sleep 60", nil)
	if ok || time.Since(start) > 30*time.Second {
		t.Fatalf("until with a hanging command: ok=%v after %v: %v", ok, time.Since(start), evs)
	}
}
