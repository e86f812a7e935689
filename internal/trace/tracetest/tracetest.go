// Package tracetest helps tests read the pcap files of package trace
// back with Wireshark's tshark, the reader that matters: a test that
// writes a trace checks what tshark decodes from it.
package tracetest

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Tshark runs Debian's tshark (package tshark) with args and returns its
// standard output. It skips the test when tshark is missing, unless the
// environment says CI=true (then it fails: CI must have it). tshark runs
// with HOME in a temporary directory, so no user profile is read or
// written.
func Tshark(t testing.TB, args ...string) string {
	t.Helper()
	bin := Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tshark %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Require returns tshark's path; without tshark it skips the test, or
// fails it when CI=true.
func Require(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("tshark")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("tshark not installed (CI=true): apt-get install tshark")
		}
		t.Skip("tshark not installed")
	}
	return bin
}
