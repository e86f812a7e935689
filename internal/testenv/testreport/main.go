// Command testreport reads `go test -json` on stdin and prints what a
// plain `go test` prints (a line per package, the output of failing
// tests, build errors), then a summary that a green run cannot hide a
// skipped suite behind: one line per skipped test with its reason, and a
// last line "N passed, N failed, N skipped". `make test` pipes into it.
//
// Its exit status is 1 when a test or a package failed, else 0; the
// Makefile also keeps go test's own (pipefail).
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"
)

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Time    time.Time
	Action  string
	Package string
	Test    string
	Elapsed float64
	Output  string
}

type testKey struct{ pkg, test string }

// report accumulates the run.
type report struct {
	out     io.Writer
	output  map[testKey][]string // output of running tests, until they end
	skipped []string
	passed  int
	failed  int
	broken  bool // a package failed (build error, panic outside a test, ...)
}

func main() {
	r := &report{out: os.Stdout, output: map[testKey][]string{}}
	if err := r.read(os.Stdin); err != nil {
		fmt.Fprintln(os.Stderr, "testreport:", err)
		os.Exit(2)
	}
	r.summary()
	if r.failed > 0 || r.broken {
		os.Exit(1)
	}
}

func (r *report) read(in io.Reader) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var ev event
		if err := json.Unmarshal(line, &ev); err != nil || ev.Action == "" {
			// Not test2json's (a build error printed by go itself).
			fmt.Fprintln(r.out, string(line))
			continue
		}
		r.event(ev)
	}
	return sc.Err()
}

func (r *report) event(ev event) {
	k := testKey{ev.Package, ev.Test}
	switch ev.Action {
	case "output", "build-output":
		r.output[k] = append(r.output[k], ev.Output)
	case "pass", "fail", "skip":
		if ev.Test == "" {
			r.packageDone(ev)
			return
		}
		r.testDone(k, ev.Action)
	}
}

// testDone accounts for a test that ended and forgets its output.
func (r *report) testDone(k testKey, action string) {
	out := r.output[k]
	delete(r.output, k)
	switch action {
	case "pass":
		r.passed++
	case "fail":
		r.failed++
		for _, l := range out {
			fmt.Fprint(r.out, l)
		}
	case "skip":
		r.skipped = append(r.skipped, fmt.Sprintf("%s %s: %s", strings.TrimPrefix(k.pkg, modulePrefix(k.pkg)), k.test, skipReason(out)))
	}
}

// packageDone prints the package's line, and its own output when it
// failed (build errors, a panic, a leak report from TestMain).
func (r *report) packageDone(ev event) {
	k := testKey{ev.Package, ""}
	out := r.output[k]
	delete(r.output, k)
	switch ev.Action {
	case "pass":
		fmt.Fprintf(r.out, "ok  \t%s\t%.3fs\n", ev.Package, ev.Elapsed)
	case "skip":
		fmt.Fprintf(r.out, "?   \t%s\t[no test files]\n", ev.Package)
	case "fail":
		r.broken = true
		for _, l := range out {
			if !strings.HasPrefix(l, "FAIL") && !strings.HasPrefix(l, "ok ") {
				fmt.Fprint(r.out, l)
			}
		}
		fmt.Fprintf(r.out, "FAIL\t%s\t%.3fs\n", ev.Package, ev.Elapsed)
	}
}

// skipReason is the message of t.Skip: the last line the test printed
// before its "--- SKIP" line.
func skipReason(out []string) string {
	for i := len(out) - 1; i >= 0; i-- {
		l := strings.TrimSpace(out[i])
		if l == "" || strings.HasPrefix(l, "--- SKIP") || strings.HasPrefix(l, "=== ") {
			continue
		}
		return l
	}
	return "(no reason given)"
}

// modulePrefix is the part of a package path to leave out of the
// summary: the module path and its slash.
func modulePrefix(pkg string) string {
	const mod = "github.com/wsrc-go/wsrc/"
	if strings.HasPrefix(pkg, mod) {
		return mod
	}
	return ""
}

func (r *report) summary() {
	sort.Strings(r.skipped)
	if len(r.skipped) > 0 {
		fmt.Fprintf(r.out, "\nSkipped tests (%d), each with its reason:\n", len(r.skipped))
		for _, s := range r.skipped {
			fmt.Fprintf(r.out, "  SKIP %s\n", s)
		}
	}
	fmt.Fprintf(r.out, "\n%d passed, %d failed, %d skipped\n", r.passed, r.failed, len(r.skipped))
}
