package deb

import (
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// upgradeSuffix makes the upgrade packages' version: the built one plus it.
const upgradeSuffix = "+test2"

// upgradeMarker is the line the upgrade package adds to the agent's
// /etc/default file, so that the conffile changes upstream.
const upgradeMarker = "# (a line added by the test's upgrade package)"

// enableLinks are the symbolic links that enabling the units makes.
var enableLinks = map[string]string{
	"/etc/systemd/system/multi-user.target.wants/wsrc-agent.service":   "/usr/lib/systemd/system/wsrc-agent.service",
	"/etc/systemd/system/multi-user.target.wants/wsrc-server.service":  "/usr/lib/systemd/system/wsrc-server.service",
	"/etc/systemd/system/sockets.target.wants/wsrc-server-user.socket": "/usr/lib/systemd/system/wsrc-server-user.socket",
	"/etc/systemd/system/sockets.target.wants/wsrc-server-card.socket": "/usr/lib/systemd/system/wsrc-server-card.socket",
}

// amd64Debs returns the built amd64 packages, for installing here.
func amd64Debs(t *testing.T) []*debPackage {
	t.Helper()
	all := builtDebs(t)
	if hostArch(t) != "amd64" {
		skipOrFail(t, "the install test installs the amd64 packages; this machine is "+hostArch(t))
	}
	var out []*debPackage
	for _, n := range packageNames {
		out = append(out, all[n+"_amd64"])
	}
	return out
}

// makeUpgrade repacks the packages as a newer version (upgradeSuffix) in
// which the agent's /etc/default file has changed upstream, and returns the
// new packages' paths.
func makeUpgrade(t *testing.T, pkgs []*debPackage) []string {
	t.Helper()
	dir := t.TempDir()
	var out []string
	for _, d := range pkgs {
		tree := filepath.Join(dir, d.Name)
		mustRun(t, nil, "dpkg-deb", "--raw-extract", d.Path, tree)
		control := filepath.Join(tree, "DEBIAN", "control")
		text, err := os.ReadFile(control)
		if err != nil {
			t.Fatal(err)
		}
		version := d.Control["Version"]
		text = regexp.MustCompile(`(?m)^Version: .*$`).ReplaceAll(text, []byte("Version: "+version+upgradeSuffix))
		if err := os.WriteFile(control, text, 0o644); err != nil {
			t.Fatal(err)
		}
		if d.Name == "wsrc-agent" {
			changeConffile(t, tree, "etc/default/wsrc-agent")
		}
		deb := filepath.Join(dir, d.Name+"_"+version+upgradeSuffix+"_"+d.Arch+".deb")
		mustRun(t, nil, "dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build", tree, deb)
		out = append(out, deb)
	}
	return out
}

// changeConffile appends upgradeMarker to a file of an extracted package
// and updates its line in DEBIAN/md5sums, if it has one.
func changeConffile(t *testing.T, tree, rel string) {
	t.Helper()
	path := filepath.Join(tree, rel)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data = append(data, []byte(upgradeMarker+"\n")...)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	sums := filepath.Join(tree, "DEBIAN", "md5sums")
	text, err := os.ReadFile(sums)
	if err != nil {
		t.Fatal(err)
	}
	sum := md5.Sum(data)
	re := regexp.MustCompile(`(?m)^[0-9a-f]{32}(  ` + regexp.QuoteMeta(rel) + `)$`)
	text = re.ReplaceAll(text, []byte(hex.EncodeToString(sum[:])+"$1"))
	if err := os.WriteFile(sums, text, 0o644); err != nil {
		t.Fatal(err)
	}
}

// debPaths returns the paths of packages.
func debPaths(pkgs []*debPackage) []string {
	var out []string
	for _, d := range pkgs {
		out = append(out, d.Path)
	}
	return out
}

// TestInstallCycle installs, upgrades, removes and purges the amd64
// packages with dpkg in a sandbox without systemd, as in a chroot, a
// container or an image build: the maintainer scripts must succeed, start
// nothing, create the user, enable the units, keep the administrator's
// configuration and choices across an upgrade and a removal, and purge
// deletes the configuration, the state and the enable links.
func TestInstallCycle(t *testing.T) {
	pkgs := amd64Debs(t)
	version := pkgs[0].Control["Version"]
	sb := newSandbox(t, stageDebs(t, map[string][]string{"v1": debPaths(pkgs), "v2": makeUpgrade(t, pkgs)}))
	installRecorders(sb)

	// Install.
	sb.must("dpkg -i /tmp/debs/v1/*.deb")
	for _, n := range packageNames {
		if got := sb.status(n); got != "install ok installed "+version {
			t.Errorf("%s: %q after install", n, got)
		}
	}
	passwd := strings.Split(strings.TrimSpace(sb.must("getent passwd wsrc")), ":")
	if len(passwd) != 7 || passwd[3] == "" || !strings.HasSuffix(passwd[6], "nologin") {
		t.Errorf("user wsrc: %q, want a system user with a nologin shell", passwd)
	}
	sb.must("getent group wsrc")
	// Both packages declare the user; sysusers must see no conflict.
	if out := sb.must("systemd-sysusers 2>&1"); out != "" {
		t.Errorf("systemd-sysusers with both packages installed says:\n%s", out)
	}
	for link, target := range enableLinks {
		if !linksTo(sb, link, target) {
			t.Errorf("%s does not link to %s after install", link, target)
		}
	}
	for _, cmd := range []string{"wsrc-agent --version", "wsrc-server --version", "wsrc version"} {
		sb.must(cmd)
	}
	checkConfig(t, sb, "agent", "server: ws://127.0.0.1:4221/", "after install")
	checkConfig(t, sb, "server", "card port 127.0.0.1:4221, no authentication", "after install")
	if calls := serviceCalls(sb); len(calls) > 0 {
		t.Errorf("without systemd the scripts called %q", calls)
	}

	// The administrator configures both, and disables the user port's
	// socket (to let the server bind its own address).
	sb.must(`sed -i 's|^#server = .*|server = "wss://relay.example.org:4221/"|' /etc/wsrc/agent.toml`)
	sb.must(`echo 'WSRC_AGENT_ARGS="--log-level debug"' >>/etc/default/wsrc-agent`)
	sb.must(`printf '[card_port]\nbind_port = 4321\n' >>/etc/wsrc/server.toml`)
	sb.must(`echo 'WSRC_SERVER_ARGS="--log-level debug"' >>/etc/default/wsrc-server`)
	sb.must("mkdir -p /var/lib/wsrc-agent /var/lib/wsrc-server && touch /var/lib/wsrc-agent/kept /var/lib/wsrc-server/kept")
	sb.must("/usr/bin/systemctl disable wsrc-server-user.socket")

	// Upgrade: the agent's /etc/default file changed upstream (dpkg keeps
	// the administrator's, as apt-get does unattended with
	// --force-confold, and leaves the new one beside it); the server's did
	// not (kept without a question).
	sb.must("dpkg -i --force-confdef --force-confold /tmp/debs/v2/wsrc-agent_*.deb")
	sb.must("dpkg -i /tmp/debs/v2/wsrc-server_*.deb /tmp/debs/v2/wsrc_*.deb")
	for _, n := range packageNames {
		if got := sb.status(n); got != "install ok installed "+version+upgradeSuffix {
			t.Errorf("%s: %q after upgrade", n, got)
		}
	}
	checkEdited(t, sb, "after upgrade")
	checkConfig(t, sb, "agent", "server: wss://relay.example.org:4221/", "after upgrade")
	checkConfig(t, sb, "server", "card port 127.0.0.1:4321", "after upgrade")
	if out := sb.must("cat /etc/default/wsrc-agent.dpkg-dist"); !strings.Contains(out, upgradeMarker) {
		t.Errorf("/etc/default/wsrc-agent.dpkg-dist is not the new upstream file:\n%s", out)
	}
	if sb.exists("/etc/default/wsrc-server.dpkg-dist") || sb.exists("/etc/default/wsrc-server.dpkg-new") {
		t.Error("unchanged upstream conffile /etc/default/wsrc-server got a .dpkg-dist/.dpkg-new")
	}
	for link, target := range enableLinks {
		if strings.HasSuffix(link, "wsrc-server-user.socket") {
			if sb.exists(link) {
				t.Errorf("%s exists after upgrade: the administrator's disable was undone", link)
			}
		} else if !linksTo(sb, link, target) {
			t.Errorf("%s does not link to %s after upgrade", link, target)
		}
	}
	if calls := serviceCalls(sb); len(calls) > 0 {
		t.Errorf("without systemd the scripts called %q", calls)
	}

	// Remove: programs gone; configuration, state and user kept.
	sb.must("dpkg -r wsrc-agent wsrc-server wsrc")
	for _, n := range []string{"wsrc-agent", "wsrc-server"} {
		if got := sb.status(n); got != "deinstall ok config-files "+version+upgradeSuffix {
			t.Errorf("%s: %q after remove", n, got)
		}
	}
	for _, p := range []string{"/usr/bin/wsrc-agent", "/usr/bin/wsrc-server", "/usr/bin/wsrc", "/usr/lib/systemd/system/wsrc-agent.service"} {
		if sb.exists(p) {
			t.Errorf("%s is left after remove", p)
		}
	}
	checkEdited(t, sb, "after remove")
	for _, p := range []string{"/var/lib/wsrc-agent/kept", "/var/lib/wsrc-server/kept"} {
		if !sb.exists(p) {
			t.Errorf("%s is gone after remove (state is kept until purge)", p)
		}
	}
	sb.must("getent passwd wsrc")

	// Purge: configuration, state and the units' enable state gone; the
	// user stays (Debian policy).
	sb.must("dpkg -P wsrc-agent wsrc-server wsrc")
	for _, n := range packageNames {
		if got := sb.status(n); got != "" && !strings.HasPrefix(got, "unknown ok not-installed") {
			t.Errorf("%s: %q after purge", n, got)
		}
	}
	left := []string{
		"/etc/default/wsrc-agent", "/etc/default/wsrc-agent.dpkg-dist", "/etc/default/wsrc-server",
		"/etc/wsrc/agent.toml", "/etc/wsrc/server.toml",
		"/var/lib/wsrc-agent", "/var/lib/wsrc-server",
		"/etc/systemd/system/wsrc-agent.service", "/etc/systemd/system/wsrc-server.service",
	}
	for link := range enableLinks {
		left = append(left, link)
	}
	for _, p := range left {
		if sb.exists(p) {
			t.Errorf("%s is left after purge", p)
		}
	}
	if out, _ := sb.run("ls /var/lib/systemd/deb-systemd-helper-enabled /var/lib/systemd/deb-systemd-helper-masked 2>/dev/null | grep wsrc"); out != "" {
		t.Errorf("deb-systemd-helper state left after purge:\n%s", out)
	}
	if out, rc := sb.run("dpkg-statoverride --list '/etc/wsrc/*'"); rc == 0 {
		t.Errorf("statoverride left after purge: %s", out)
	}
	sb.must("getent passwd wsrc")
}

// checkConfig checks /etc/wsrc/<name>.toml: 0640 root:wsrc, and
// `wsrc-<name> check-config`, run as user wsrc like the service, reads it
// and says want.
func checkConfig(t *testing.T, sb *sandbox, name, want, when string) {
	t.Helper()
	file := "/etc/wsrc/" + name + ".toml"
	if got := sb.must("stat -c '%U:%G %a' " + file); got != "root:wsrc 640" {
		t.Errorf("%s is %s %s, want root:wsrc 640", file, got, when)
	}
	out := sb.must("setpriv --reuid=wsrc --regid=wsrc --init-groups wsrc-" + name + " check-config")
	if !strings.Contains(out, want) {
		t.Errorf("wsrc-%s check-config as user wsrc %s:\n%s\nwant %q", name, when, out, want)
	}
}

// linksTo reports whether link is a symbolic link that resolves to the
// same file as target (deb-systemd-helper links to /lib/systemd/system on
// a merged-/usr system).
func linksTo(sb *sandbox, link, target string) bool {
	sb.t.Helper()
	_, rc := sb.run(fmt.Sprintf(`test -L %s && test "$(readlink -f %s)" = "$(readlink -f %s)"`, link, link, target))
	return rc == 0
}

// checkEdited fails the test unless the configuration files still hold
// the administrator's lines.
func checkEdited(t *testing.T, sb *sandbox, when string) {
	t.Helper()
	for file, line := range map[string]string{
		"/etc/wsrc/agent.toml":     `server = "wss://relay.example.org:4221/"`,
		"/etc/default/wsrc-agent":  `WSRC_AGENT_ARGS="--log-level debug"`,
		"/etc/default/wsrc-server": `WSRC_SERVER_ARGS="--log-level debug"`,
		"/etc/wsrc/server.toml":    "bind_port = 4321",
	} {
		if out, _ := sb.run("cat " + file); !strings.Contains(out, line) {
			t.Errorf("%s lost the administrator's line %s:\n%s", file, when, out)
		}
	}
}

// recorder is a stand-in for systemctl and udevadm that logs its
// arguments. As systemctl it hands the offline calls (--root=, which
// deb-systemd-helper uses to enable units by preset) to the real one,
// answers is-enabled from the enable links (so deb-systemd-invoke skips
// disabled units, as with the real one), and says every unit is inactive.
const recorder = `#!/bin/sh
echo "$(basename "$0") $*" >>/tmp/calls.log
case " $* " in
*" --root="*) exec "/usr/bin/$(basename "$0")" "$@" ;; # offline: preset, enable, disable
*" is-enabled "*)
	for u; do :; done
	if ls /etc/systemd/system/*.wants/"$u" >/dev/null 2>&1; then echo enabled; exit 0; fi
	echo disabled; exit 1 ;;
*" is-active "*) exit 3 ;;
esac
exit 0
`

// installRecorders puts the recorder first on PATH as systemctl and
// udevadm (/usr/local/sbin); /usr/bin/systemctl stays the real one.
func installRecorders(sb *sandbox) {
	sb.t.Helper()
	sb.must("mkdir -p /usr/local/sbin && cat >/usr/local/sbin/systemctl <<'EOF'\n" + recorder + "EOF\n" +
		"chmod 755 /usr/local/sbin/systemctl && cp /usr/local/sbin/systemctl /usr/local/sbin/udevadm && : >/tmp/calls.log")
}

// serviceCalls returns the logged calls that change what runs (start,
// stop, restart, udevadm) and empties the log. daemon-reload is left out:
// deb-systemd-helper reloads too, as often as it sees fit.
func serviceCalls(sb *sandbox) []string {
	sb.t.Helper()
	out := sb.must("cat /tmp/calls.log && : >/tmp/calls.log")
	var calls []string
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		if f[0] == "udevadm" || slices.ContainsFunc(f, func(w string) bool {
			return w == "start" || w == "stop" || w == "restart"
		}) {
			calls = append(calls, l)
		}
	}
	return calls
}

// TestScriptsUnderSystemd installs, upgrades and removes the amd64
// packages in a sandbox that looks booted with systemd (/run/systemd/system
// exists, udevd's control socket too) with recording stand-ins for
// systemctl and udevadm, and checks what the maintainer scripts start,
// restart and stop, in which order.
func TestScriptsUnderSystemd(t *testing.T) {
	pkgs := amd64Debs(t)
	sb := newSandbox(t, stageDebs(t, map[string][]string{"v1": debPaths(pkgs), "v2": makeUpgrade(t, pkgs)}))
	installRecorders(sb)
	// This machine may be a container whose policy-rc.d forbids starting
	// services (exit 101); deb-systemd-invoke obeys it, see the last step.
	sb.must("rm -f /usr/sbin/policy-rc.d")
	sb.must("mkdir -p /run/systemd/system /run/udev && " +
		`perl -MIO::Socket::UNIX -e 'IO::Socket::UNIX->new(Type => SOCK_STREAM(), Local => "/run/udev/control", Listen => 1) or die $!'`)

	steps := []struct {
		name, cmd string
		want      []string
	}{
		{"install", "dpkg -i /tmp/debs/v1/*.deb", []string{
			"udevadm control --reload-rules",
			"udevadm trigger --subsystem-match=usb --action=change",
			"systemctl --quiet --system start wsrc-agent.service",
			"systemctl --quiet --system start wsrc-server-user.socket wsrc-server-card.socket",
			"systemctl --quiet --system start wsrc-server.service",
		}},
		{"upgrade", "dpkg -i --force-confdef --force-confold /tmp/debs/v2/*.deb", []string{
			"udevadm control --reload-rules",
			"udevadm trigger --subsystem-match=usb --action=change",
			"systemctl --quiet --system restart wsrc-agent.service",
			"systemctl stop wsrc-server.service",
			"systemctl --quiet --system restart wsrc-server-user.socket wsrc-server-card.socket",
			"systemctl --quiet --system start wsrc-server.service",
		}},
		{"remove", "dpkg -r wsrc-agent wsrc-server wsrc", []string{
			"systemctl stop wsrc-agent.service",
			"systemctl stop wsrc-server.service wsrc-server-user.socket wsrc-server-card.socket",
		}},
		// In a container that forbids services (policy-rc.d exits 101),
		// a reinstall starts nothing.
		{"install under policy-rc.d 101", "printf '#!/bin/sh\\nexit 101\\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && dpkg -i /tmp/debs/v2/*.deb", []string{
			"udevadm control --reload-rules",
			"udevadm trigger --subsystem-match=usb --action=change",
		}},
	}
	for _, s := range steps {
		sb.must(s.cmd)
		if got := serviceCalls(sb); !slices.Equal(got, s.want) {
			t.Errorf("%s: the scripts called\n  %s\nwant\n  %s", s.name, strings.Join(got, "\n  "), strings.Join(s.want, "\n  "))
		}
	}
}
