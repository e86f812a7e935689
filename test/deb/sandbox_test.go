package deb

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// sandboxSetup runs as root in fresh mount and PID namespaces: it builds a
// throw-away copy of this machine, an overlay whose lower layer is / (the
// root file system only: submounts do not show through) and whose writes
// go to a tmpfs, mounts /dev, /proc and empty /run and /tmp in it, copies
// the packages to /tmp/debs, and starts a shell in it that reads commands
// from stdin. When that shell exits, PID 1 of the namespace is gone: the
// kernel kills what is left and drops every mount, so nothing reaches the
// host. $1 is an empty directory for the mounts, $2 the packages to copy.
const sandboxSetup = `set -eu
D=$1
mount -t tmpfs -o mode=0755 wsrc-deb-test "$D"
mkdir "$D/upper" "$D/work" "$D/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$D/upper,workdir=$D/work" "$D/root"
R=$D/root
mount --rbind /dev "$R/dev"
mount -t proc proc "$R/proc"
mount -t tmpfs -o mode=0755 tmpfs "$R/run"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
cp -R "$2" "$R/tmp/debs"
exec chroot "$R" /usr/bin/env -i HOME=/root LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
	PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin /bin/sh
`

// sandbox is a shell in a throw-away copy of this machine (see
// sandboxSetup), driven one command at a time. The test goroutine owns it.
type sandbox struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	out    *bufio.Reader
	marker string // ends each command's output, followed by its exit status
}

// newSandbox starts a sandbox holding a copy of the directory debs at
// /tmp/debs. It skips (fails when strict) where this machine cannot make
// one: not root, no unshare, no overlayfs. The sandbox lives until the test
// ends, or 5 minutes at most.
func newSandbox(t *testing.T, debs string) *sandbox {
	t.Helper()
	if os.Geteuid() != 0 {
		skipOrFail(t, "the install test needs root (mount namespaces, overlayfs, chroot)")
	}
	unshare := need(t, "unshare", "util-linux")
	for _, p := range []string{"systemd", "libusb-1.0-0", "libpcsclite1"} {
		if _, err := run(t, nil, "dpkg-query", "-W", p); err != nil {
			skipOrFail(t, "the packages' dependency "+p+" is not installed on this machine (scripts/deps.sh build, apt-get install systemd)")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	// --kill-child: if unshare dies, so does the namespace's PID 1.
	cmd := exec.CommandContext(ctx, unshare, "--mount", "--pid", "--fork", "--kill-child",
		"--propagation", "private", "--", "sh", "-c", sandboxSetup, "sandbox", t.TempDir(), debs)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("starting the sandbox: %v", err)
	}
	nonce := make([]byte, 8)
	if _, err := rand.Read(nonce); err != nil {
		t.Fatal(err)
	}
	sb := &sandbox{t: t, cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout), marker: "__wsrc_deb_test_" + hex.EncodeToString(nonce)}
	t.Cleanup(func() {
		stdin.Close() // the shell exits, and with it the namespace
		err := cmd.Wait()
		cancel()
		if err != nil && !t.Failed() {
			t.Errorf("sandbox: %v", err)
		}
	})
	if out, rc := sb.run("test -d /tmp/debs && test ! -d /run/systemd/system"); rc != 0 {
		t.Fatalf("the sandbox did not come up (%d):\n%s", rc, out)
	}
	return sb
}

// run runs a shell command in the sandbox, stdin from /dev/null, and
// returns its combined output, without trailing newlines, and exit status.
func (sb *sandbox) run(command string) (string, int) {
	sb.t.Helper()
	quoted := "'" + strings.ReplaceAll(command, "'", `'\''`) + "'"
	line := fmt.Sprintf("sh -c %s </dev/null 2>&1; printf '\\n%s %%d\\n' $?\n", quoted, sb.marker)
	if _, err := io.WriteString(sb.stdin, line); err != nil {
		sb.t.Fatalf("sandbox: sending %q: %v", command, err)
	}
	var out strings.Builder
	for {
		l, err := sb.out.ReadString('\n')
		if rest, ok := strings.CutPrefix(l, sb.marker+" "); ok {
			rc, err := strconv.Atoi(strings.TrimSpace(rest))
			if err != nil {
				sb.t.Fatalf("sandbox: bad status line %q", l)
			}
			return strings.TrimRight(out.String(), "\n"), rc
		}
		out.WriteString(l)
		if err != nil {
			sb.t.Fatalf("sandbox: %q: %v (the sandbox ended)\n%s", command, err, out.String())
		}
	}
}

// must runs a command that has to succeed and returns its output.
func (sb *sandbox) must(command string) string {
	sb.t.Helper()
	out, rc := sb.run(command)
	if rc != 0 {
		sb.t.Fatalf("sandbox: %s: exit status %d\n%s", command, rc, out)
	}
	return out
}

// exists reports whether path exists in the sandbox (a dangling symbolic
// link counts).
func (sb *sandbox) exists(path string) bool {
	sb.t.Helper()
	_, rc := sb.run("test -e " + path + " || test -L " + path)
	return rc == 0
}

// status is dpkg's view of a package: "install ok installed 1.0",
// "deinstall ok config-files 1.0", or "" when dpkg does not know it.
func (sb *sandbox) status(pkg string) string {
	sb.t.Helper()
	out, rc := sb.run("dpkg-query -W -f '${Status} ${Version}' " + pkg)
	if rc != 0 {
		return ""
	}
	return out
}

// stageDebs copies packages into subdirectories of a new directory
// (sub → package paths), as newSandbox wants them.
func stageDebs(t *testing.T, sets map[string][]string) string {
	t.Helper()
	dir := t.TempDir()
	for sub, paths := range sets {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
		for _, p := range paths {
			data, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, sub, filepath.Base(p)), data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}
