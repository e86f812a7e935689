package deb

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// agentLibs is the agent's shared-library dependencies, as
// deploy/nfpm/wsrc-agent.yaml states them and dpkg-shlibdeps computes them.
const agentLibs = "libc6 (>= 2.34), libpcsclite1 (>= 1.3.3), libusb-1.0-0 (>= 2:1.0.22)"

// wantRelations are the relationship fields of each package; a field not
// listed must be absent.
var wantRelations = map[string]map[string]string{
	"wsrc-agent": {
		"Depends":  agentLibs + ", systemd",
		"Suggests": "pcscd",
	},
	"wsrc-server": {"Depends": "systemd"},
	"wsrc":        {"Suggests": "vsmartcard-vpcd"},
}

var (
	maintainerRE = regexp.MustCompile(`^[^<>]+ <[^<>@\s]+@[^<>@\s]+>$`)
	relationKeys = []string{"Pre-Depends", "Depends", "Recommends", "Suggests", "Enhances", "Breaks", "Conflicts", "Replaces", "Provides"}
)

// TestControl checks each package's control fields.
func TestControl(t *testing.T) {
	all := builtDebs(t)
	version := all["wsrc_amd64"].Control["Version"]
	for _, key := range sortedKeys(all) {
		d := all[key]
		t.Run(key, func(t *testing.T) {
			c := d.Control
			if c["Version"] != version {
				t.Errorf("Version %q, but wsrc_amd64 has %q: packages from two builds", c["Version"], version)
			}
			for field, want := range map[string]string{
				"Section":  "net",
				"Priority": "optional",
				"Homepage": "https://github.com/wsrc-go/wsrc",
			} {
				if c[field] != want {
					t.Errorf("%s: %q, want %q", field, c[field], want)
				}
			}
			if !maintainerRE.MatchString(c["Maintainer"]) {
				t.Errorf("Maintainer %q is not \"Name <address>\"", c["Maintainer"])
			}
			if c["Installed-Size"] == "" {
				t.Error("no Installed-Size")
			}
			short, long, _ := strings.Cut(c["Description"], "\n")
			if short == "" || len(short) > 80 || strings.Count(long, "\n") < 2 {
				t.Errorf("Description: want a synopsis of at most 80 characters and a long description, got %q", c["Description"])
			}
			for _, k := range relationKeys {
				if got, want := c[k], wantRelations[d.Name][k]; got != want {
					t.Errorf("%s: %q, want %q", k, got, want)
				}
			}
		})
	}
}

// TestVersionSortsAfterPrevious checks the Debian version: valid, and
// higher than the same version with any suffix dpkg sorts lower
// (e.g. a "~rc" pre-release), so upgrades go in the right direction.
func TestVersionSortsAfterPrevious(t *testing.T) {
	v := builtDebs(t)["wsrc_amd64"].Control["Version"]
	need(t, "dpkg", "dpkg")
	mustRun(t, nil, "dpkg", "--validate-version", v)
	if _, err := run(t, nil, "dpkg", "--compare-versions", v+"+1", "gt", v); err != nil {
		t.Errorf("%s+1 does not sort after %s", v, v)
	}
	if _, err := run(t, nil, "dpkg", "--compare-versions", v+"~rc1", "lt", v); err != nil {
		t.Errorf("%s~rc1 does not sort before %s", v, v)
	}
}

// TestShlibDepends checks that the agent's library dependencies are still
// what dpkg-shlibdeps computes from the packaged binary, per architecture.
func TestShlibDepends(t *testing.T) {
	all := builtDebs(t)
	need(t, "dpkg-shlibdeps", "dpkg-dev")
	for _, arch := range debArches {
		t.Run(arch, func(t *testing.T) {
			d := all["wsrc-agent_"+arch]
			for _, lib := range []string{"libusb-1.0-0", "libpcsclite1"} {
				if _, err := run(t, nil, "dpkg-query", "-W", lib+":"+arch); err != nil {
					skipOrFail(t, lib+":"+arch+" is not installed (scripts/cross-build.sh deps installs it)")
				}
			}
			dir := t.TempDir()
			bin := filepath.Join(dir, "debian", "wsrc-agent", "usr", "bin", "wsrc-agent")
			if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(bin, d.Files["/usr/bin/wsrc-agent"].Data, 0o755); err != nil {
				t.Fatal(err)
			}
			control := "Source: wsrc\n\nPackage: wsrc-agent\nArchitecture: any\n"
			if err := os.WriteFile(filepath.Join(dir, "debian", "control"), []byte(control), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := runIn(t, dir, []string{"DEB_HOST_ARCH=" + arch}, "dpkg-shlibdeps", "-O", "-xlibc6-dev", "debian/wsrc-agent/usr/bin/wsrc-agent")
			if err != nil {
				t.Fatalf("dpkg-shlibdeps: %v\n%s", err, out)
			}
			var got string
			for _, line := range strings.Split(out, "\n") {
				if v, ok := strings.CutPrefix(line, "shlibs:Depends="); ok {
					got = v
				}
			}
			if got != agentLibs {
				t.Errorf("dpkg-shlibdeps says %q, the package declares %q: update deploy/nfpm/wsrc-agent.yaml and agentLibs", got, agentLibs)
			}
		})
	}
}
