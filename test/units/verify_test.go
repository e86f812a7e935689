package units

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// analyze returns the path of systemd-analyze and its --help text, and
// skips (fails under CI) when it is missing or has no --root.
func analyze(t *testing.T) (path, help string) {
	t.Helper()
	sa := need(t, "systemd-analyze", "systemd")
	help, _ = run(t, sa, "--help")
	if !strings.Contains(help, "--root") {
		msg := "systemd-analyze has no --root (systemd < 250)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return sa, help
}

// verify runs `systemd-analyze verify` on one unit of root and returns
// every problem: each line it printed (verify exits 0 after "Unknown key
// ..., ignoring", so warnings count) and a non-zero exit.
func verify(t *testing.T, sa, help, root, unit string) []string {
	t.Helper()
	args := []string{"verify", "--root=" + root, "--man=no", "--generators=no"}
	if strings.Contains(help, "--recursive-errors") {
		// Only our unit's problems, not those of the host's units
		// it depends on.
		args = append(args, "--recursive-errors=no")
	}
	out, err := run(t, sa, append(args, unit)...)
	var problems []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l != "" {
			problems = append(problems, l)
		}
	}
	if err != nil {
		problems = append(problems, "exit: "+err.Error())
	}
	return problems
}

func TestVerify(t *testing.T) {
	sa, help := analyze(t)
	root := unitRoot(t, readUnits(t))
	for _, u := range allUnits {
		t.Run(u, func(t *testing.T) {
			if p := verify(t, sa, help, root, u); len(p) > 0 {
				t.Errorf("systemd-analyze verify %s:\n%s", u, strings.Join(p, "\n"))
			}
		})
	}
}

// TestVerifyCatchesMistakes makes sure the check above would notice the
// mistakes it is there for, including those verify only warns about.
func TestVerifyCatchesMistakes(t *testing.T) {
	sa, help := analyze(t)
	good := readUnits(t)["wsrc-server.service"]
	for _, tc := range []struct {
		name, from, to string
		noBinary       bool
		want           string
	}{
		{name: "misspelt key", from: "WatchdogSec=", to: "WatchDogSec=", want: "WatchDogSec"},
		{name: "bad value", from: "WatchdogSec=30s", to: "WatchdogSec=half a minute", want: "half a minute"},
		{name: "bad type", from: "Type=notify", to: "Type=notfy", want: "notfy"},
		{name: "missing binary", noBinary: true, want: "/usr/bin/wsrc-server"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			text := good
			if tc.from != "" {
				if !strings.Contains(text, tc.from) {
					t.Fatalf("%q is no longer in wsrc-server.service; update this test", tc.from)
				}
				text = strings.Replace(text, tc.from, tc.to, 1)
			}
			root := unitRoot(t, map[string]string{"wsrc-server.service": text})
			if tc.noBinary {
				if err := os.Remove(filepath.Join(root, "usr/bin/wsrc-server")); err != nil {
					t.Fatal(err)
				}
			}
			p := verify(t, sa, help, root, "wsrc-server.service")
			if !strings.Contains(strings.Join(p, "\n"), tc.want) {
				t.Errorf("verify did not report %q; it said %q", tc.want, p)
			}
		})
	}
}

// exposureLimit is the highest acceptable `systemd-analyze security`
// exposure (0 best, 10 worst) per service. The agent needs USB devices,
// netlink and no user namespace, so it scores a little worse.
var exposureLimit = map[string]float64{
	"wsrc-server.service": 2.0,
	"wsrc-agent.service":  2.5,
}

var exposureRe = regexp.MustCompile(`Overall exposure level for (\S+): ([0-9]+(?:\.[0-9]+)?)`)

func TestSecurityExposure(t *testing.T) {
	sa, help := analyze(t)
	if !strings.Contains(help, "--offline") {
		t.Skip("systemd-analyze security has no --offline here (needs systemd 250+); skipping")
	}
	root := unitRoot(t, readUnits(t))
	for _, u := range services {
		t.Run(u, func(t *testing.T) {
			out, err := run(t, sa, "security", "--offline=yes", "--root="+root, "--no-pager", u)
			m := exposureRe.FindStringSubmatch(out)
			if m == nil {
				t.Fatalf("no exposure level in the output (err %v):\n%s", err, out)
			}
			score, _ := strconv.ParseFloat(m[2], 64)
			limit := exposureLimit[u]
			t.Logf("%s: exposure %.1f (limit %.1f)", u, score, limit)
			if score > limit {
				var open []string
				for _, l := range strings.Split(out, "\n") {
					if strings.HasPrefix(strings.TrimSpace(l), "✗") {
						open = append(open, l)
					}
				}
				t.Errorf("%s: exposure %.1f above %.1f; settings not hardened:\n%s",
					u, score, limit, strings.Join(open, "\n"))
			}
		})
	}
}

// TestEnable: `systemctl enable` of the two services (in a --root) wires
// the server to multi-user.target and, through Also=, both sockets to
// sockets.target.
func TestEnable(t *testing.T) {
	sc := need(t, "systemctl", "systemd")
	root := unitRoot(t, readUnits(t))
	out, err := run(t, sc, "--root="+root, "enable", "wsrc-server.service", "wsrc-agent.service")
	if err != nil {
		t.Fatalf("systemctl enable: %v\n%s", err, out)
	}
	for _, link := range []string{
		"multi-user.target.wants/wsrc-server.service",
		"multi-user.target.wants/wsrc-agent.service",
		"sockets.target.wants/wsrc-server-user.socket",
		"sockets.target.wants/wsrc-server-card.socket",
	} {
		if _, err := os.Lstat(filepath.Join(root, "etc/systemd/system", link)); err != nil {
			t.Errorf("after enable: %v\n%s", err, out)
		}
	}
}
