package units

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// sysusers runs `systemd-sysusers --dry-run` for conf on an empty root and
// returns what it printed; every line naming the file is a problem (it
// exits 0 after "Conflict with earlier configuration ..., ignoring line").
func sysusers(t *testing.T, conf string) (out string, problems []string) {
	t.Helper()
	su := need(t, "systemd-sysusers", "systemd")
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	path, err := filepath.Abs(conf)
	if err != nil {
		t.Fatal(err)
	}
	out, err = run(t, su, "--dry-run", "--root="+root, path)
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, path) {
			problems = append(problems, l)
		}
	}
	if err != nil {
		problems = append(problems, "exit: "+err.Error())
	}
	return out, problems
}

func TestSysusers(t *testing.T) {
	out, problems := sysusers(t, filepath.Join(unitsDir, "wsrc.sysusers.conf"))
	if len(problems) > 0 {
		t.Fatalf("systemd-sysusers:\n%s", strings.Join(problems, "\n"))
	}
	for _, w := range []string{"Creating group 'wsrc'", "Creating user 'wsrc'"} {
		if !strings.Contains(out, w) {
			t.Errorf("systemd-sysusers did not say %q:\n%s", w, out)
		}
	}
	t.Logf("systemd-sysusers --dry-run:\n%s", out)
}

// TestSysusersCatchesMistakes: the check above notices a bad line and a
// conflicting one (the latter only a warning for sysusers). (The file
// uses plain "u", not "u!": Debian 12's systemd 252 rejects "u!".)
func TestSysusersCatchesMistakes(t *testing.T) {
	for _, bad := range []string{
		"q wsrc -\n",
		"u wsrc - \"a\"\nu wsrc - \"b\"\n",
	} {
		f := filepath.Join(t.TempDir(), "bad.conf")
		if err := os.WriteFile(f, []byte(bad), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, problems := sysusers(t, f); len(problems) == 0 {
			t.Errorf("no problem reported for %q", bad)
		}
	}
}
