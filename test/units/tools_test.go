package units

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// unitsDir is systemd/ of this repository, relative to this package.
const unitsDir = "../../systemd"

// services and sockets are the unit files under test.
var (
	services = []string{"wsrc-server.service", "wsrc-agent.service"}
	sockets  = []string{"wsrc-server-user.socket", "wsrc-server-card.socket"}
	allUnits = append(append([]string(nil), services...), sockets...)
	// templates are template units; the tests check an instance of each.
	templates = []string{"wsrc-vpcd@.service"}
)

// need returns the path of tool, or skips the test saying which package
// brings it; under CI=true a missing tool fails the test instead.
func need(t *testing.T, tool, debianPackage string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err == nil {
		return p
	}
	msg := tool + " not found (Debian package " + debianPackage + ")"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + ": CI must install it")
	}
	t.Skip(msg + "; skipping")
	return ""
}

// run runs a command with a time limit and returns its combined output.
func run(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.Env = append(os.Environ(), "SYSTEMD_COLORS=0", "SYSTEMD_PAGER=", "LC_ALL=C.UTF-8")
	err := cmd.Run()
	return out.String(), err
}

// hostUnitDir is where this machine keeps its packaged units.
func hostUnitDir() string {
	for _, d := range []string{"/usr/lib/systemd/system", "/lib/systemd/system"} {
		if _, err := os.Stat(filepath.Join(d, "sysinit.target")); err == nil {
			return d
		}
	}
	return ""
}

// unitRoot builds a file system root for `systemd-analyze --root`: the
// host's unit directory (verify follows default dependencies such as
// sysinit.target, which must resolve inside the root), the given unit
// files in /etc/systemd/system, and an executable stand-in at every
// absolute path that an Exec*= line of theirs names. units maps a file
// name to its content.
func unitRoot(t *testing.T, units map[string]string) string {
	t.Helper()
	host := hostUnitDir()
	if host == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("no systemd unit directory (sysinit.target) on this machine")
		}
		t.Skip("no systemd unit directory (sysinit.target) on this machine")
	}
	root := t.TempDir()
	copyTolerant(t, host, filepath.Join(root, "usr/lib/systemd/system"))
	etc := filepath.Join(root, "etc/systemd/system")
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, text := range units {
		if err := os.WriteFile(filepath.Join(etc, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		for _, bin := range execPaths(text) {
			p := filepath.Join(root, bin)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	return root
}

// copyTolerant copies the regular files and symlinks (aliases, masks) of
// src to dst, skipping what cannot be read: a stray unreadable unit of the
// host is not ours to fail for. (os.CopyFS refuses symlinks.)
func copyTolerant(t *testing.T, src, dst string) {
	t.Helper()
	filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(src, p)
		to := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			os.MkdirAll(to, 0o755)
		case d.Type()&fs.ModeSymlink != 0:
			if l, err := os.Readlink(p); err == nil {
				os.Symlink(l, to)
			}
		case d.Type().IsRegular():
			if b, err := os.ReadFile(p); err == nil {
				os.WriteFile(to, b, 0o644)
			}
		}
		return nil
	})
}

// execPaths are the absolute program paths of a unit's Exec*= lines.
func execPaths(unit string) []string {
	var paths []string
	for _, line := range strings.Split(unit, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok || !strings.HasPrefix(k, "Exec") {
			continue
		}
		// Exec prefixes (@, -, :, +, !) come before the path.
		v = strings.TrimLeft(strings.TrimSpace(v), "@-:+!")
		if f := strings.Fields(v); len(f) > 0 && strings.HasPrefix(f[0], "/") {
			paths = append(paths, f[0])
		}
	}
	return paths
}

// readUnits returns the content of our unit files by name.
func readUnits(t *testing.T) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, u := range append(slices.Clone(allUnits), templates...) {
		b, err := os.ReadFile(filepath.Join(unitsDir, u))
		if err != nil {
			t.Fatal(err)
		}
		m[u] = string(b)
	}
	return m
}

// execLookPath is exec.LookPath, for tests whose tool is optional even in CI.
var execLookPath = exec.LookPath
