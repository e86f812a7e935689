package deb

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestShellcheck runs shellcheck (as POSIX sh, which dpkg runs them with)
// and dash -n on the maintainer scripts in deploy/nfpm/scripts/;
// TestMaintainerScripts proves those are the packaged ones.
func TestShellcheck(t *testing.T) {
	scripts, err := filepath.Glob(filepath.Join(repoRoot, "deploy", "nfpm", "scripts", "*"))
	if err != nil || len(scripts) == 0 {
		t.Fatalf("no maintainer scripts in deploy/nfpm/scripts (%v)", err)
	}
	need(t, "dash", "dash")
	for _, s := range scripts {
		mustRun(t, nil, "dash", "-n", s)
	}
	need(t, "shellcheck", "shellcheck")
	mustRun(t, nil, "shellcheck", append([]string{"--shell=sh", "--severity=style"}, scripts...)...)
}

// lintianTag is a line of lintian's output: "E: wsrc: tag-name [context]".
var lintianTag = regexp.MustCompile(`^([EWIPXO]): (\S+): (\S+)`)

// TestLintian runs lintian on every package. Errors and warnings fail the
// test; so does an override that no longer matches anything (the
// overrides live in deploy/nfpm/lintian/, each with its reason). Info
// tags are logged.
func TestLintian(t *testing.T) {
	all := builtDebs(t)
	lintian := need(t, "lintian", "lintian")
	args := []string{"--info", "--display-info", "--pedantic", "--show-overrides", "--no-tag-display-limit"}
	for _, key := range sortedKeys(all) {
		args = append(args, all[key].Path)
	}
	// lintian's exit status follows --fail-on, which is not what this
	// test checks: it reads the tags.
	out, _ := run(t, nil, lintian, args...)
	var infos []string
	for _, line := range strings.Split(out, "\n") {
		m := lintianTag.FindStringSubmatch(line)
		switch {
		case m == nil:
		case m[1] == "E" || m[1] == "W":
			t.Errorf("lintian: %s", line)
		case m[3] == "unused-override" || m[3] == "mismatched-override":
			t.Errorf("lintian: %s (fix deploy/nfpm/lintian/)", line)
		case m[1] == "I" || m[1] == "P":
			infos = append(infos, line)
		}
	}
	if strings.Contains(out, "internal error") || !strings.Contains(out, "O: ") {
		t.Errorf("lintian did not run as expected (no overridden tag shown):\n%s", out)
	}
	t.Logf("lintian info and pedantic tags (not failures):\n%s", strings.Join(infos, "\n"))
}
