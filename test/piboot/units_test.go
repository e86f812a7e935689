package piboot

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestImageUnits runs `systemd-analyze verify` on the image's own units
// (deploy/pi-image/rootfs/usr/lib/systemd/system) in a scratch root made
// of the host's systemd units, the image's units and its scripts. Any
// output counts: verify exits 0 after warnings such as unknown keys.
func TestImageUnits(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("systemd-analyze not found: %v", err)
		}
		t.Skipf("systemd-analyze not found: %v", err)
	}
	help, _ := exec.Command(sa, "--help").CombinedOutput()
	if !strings.Contains(string(help), "--root") {
		t.Skip("systemd-analyze has no --root (systemd < 250)")
	}
	var host string
	for _, d := range []string{"/usr/lib/systemd/system", "/lib/systemd/system"} {
		if _, err := os.Stat(filepath.Join(d, "sysinit.target")); err == nil {
			host = d
			break
		}
	}
	if host == "" {
		t.Skip("no systemd unit directory on this machine")
	}
	src := filepath.Join(repoRoot(t), "deploy", "pi-image", "rootfs")
	root := t.TempDir()
	units := filepath.Join(root, "usr/lib/systemd/system")
	if err := os.MkdirAll(filepath.Dir(units), 0o755); err != nil {
		t.Fatal(err)
	}
	// cp -a keeps the aliases and masks (symlinks) of the host's units.
	if out, err := exec.Command("cp", "-a", host, units).CombinedOutput(); err != nil {
		t.Fatalf("copying %s: %v\n%s", host, err, out)
	}
	if out, err := exec.Command("cp", "-r", filepath.Join(src, "usr"), root).CombinedOutput(); err != nil {
		t.Fatalf("copying the image's files: %v\n%s", err, out)
	}
	ours, err := filepath.Glob(filepath.Join(src, "usr/lib/systemd/system/*.service"))
	if err != nil || len(ours) < 2 {
		t.Fatalf("the image's units: %v %v", ours, err)
	}
	args := []string{"verify", "--root=" + root, "--man=no", "--generators=no"}
	if strings.Contains(string(help), "--recursive-errors") {
		args = append(args, "--recursive-errors=no")
	}
	for _, u := range ours {
		name := filepath.Base(u)
		t.Run(name, func(t *testing.T) {
			out, err := exec.Command(sa, append(args, name)...).CombinedOutput()
			if err != nil || strings.TrimSpace(string(out)) != "" {
				t.Errorf("systemd-analyze verify %s: %v\n%s", name, err, out)
			}
		})
	}
}
