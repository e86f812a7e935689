package deb

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
)

// agentUserData is the example for the agent on a Raspberry Pi.
var agentUserData = filepath.Join(repoRoot, "deploy", "cloud-init", "agent-user-data.yaml")

// The agent example's files (write_files) and what its placeholders say.
const (
	agentScriptPath = "/root/wsrc/install.sh"
	agentConfigPath = "/root/wsrc/agent.toml"
	agentTokenPath  = "/root/wsrc/agent.token"

	agentURLPlaceholder   = "DEB_BASE_URL=https://downloads.example.org/wsrc"
	agentSumPlaceholder   = "0000000000000000000000000000000000000000000000000000000000000000  wsrc-agent_1.0.0_arm64.deb"
	agentTokenPlaceholder = "CHANGE: line 1 of wsrc-server gen-token"
	agentServer           = "wss://relay.example.org:4221/"
)

// testAgentToken is what the tests put in place of the token.
const testAgentToken = "wsrc_cloudinit-test-token"

// loadAgentExample reads the agent example and returns it with its
// write_files entries by path; it fails the test unless exactly the three
// files the script expects are there.
func loadAgentExample(t *testing.T) (cloudConfig, map[string]writeFile) {
	t.Helper()
	cc := loadCloudConfig(t, agentUserData)
	files := writtenFiles(t, cc)
	if got, want := slices.Sorted(maps.Keys(files)), []string{agentTokenPath, agentConfigPath, agentScriptPath}; !slices.Equal(got, want) {
		t.Fatalf("write_files has %q, want %q", got, want)
	}
	return cc, files
}

// TestCloudInitAgent checks the Pi's cloud-init example without a
// package: valid YAML with known keys (and cloud-init's schema check where
// it is installed); a login by ssh key only; the token and configuration
// staged root-only, and moved to /etc/wsrc as 0640 root:wsrc by the
// script; the script clean under sh -n and shellcheck; and the agent.toml
// it writes accepted by `wsrc-agent check-config` once the token file
// exists.
func TestCloudInitAgent(t *testing.T) {
	cc, files := loadAgentExample(t)

	if cc.Hostname == "" || !cc.ManageEtcHosts {
		t.Errorf("hostname %q, manage_etc_hosts %v: want a host name in /etc/hosts", cc.Hostname, cc.ManageEtcHosts)
	}
	if len(cc.Users) != 1 {
		t.Fatalf("users: %d entries, want 1 (and not the image's default user)", len(cc.Users))
	}
	u := cc.Users[0]
	if u.Name == "" || u.LockPasswd == nil || !*u.LockPasswd || len(u.SSHAuthorizedKeys) != 1 || !slices.Contains(u.Groups, "sudo") {
		t.Errorf("user %+v: want a named sudo user with a locked password and one ssh key", u)
	}
	if cc.SSHPwauth == nil || *cc.SSHPwauth {
		t.Error("ssh_pwauth is not false")
	}
	if !cc.PackageUpdate || !slices.Contains(cc.Packages, "curl") || !slices.Contains(cc.Packages, "ca-certificates") {
		t.Errorf("package_update %v, packages %q: want the lists updated, curl and ca-certificates", cc.PackageUpdate, cc.Packages)
	}
	if len(cc.Runcmd) != 2 || !slices.Equal(cc.Runcmd[1], []string{agentScriptPath}) ||
		!strings.Contains(strings.Join(cc.Runcmd[0], " "), "systemctl enable --now ssh") {
		t.Errorf("runcmd %q, want sshd enabled, then [%s]", cc.Runcmd, agentScriptPath)
	}
	for path, mode := range map[string]string{agentScriptPath: "0700", agentConfigPath: "0600", agentTokenPath: "0600"} {
		if files[path].Permissions != mode {
			t.Errorf("%s: permissions %s, want %s", path, files[path].Permissions, mode)
		}
	}

	script, config := files[agentScriptPath].Content, files[agentConfigPath].Content
	for _, want := range []string{
		"set -eu", "cd /root/wsrc", "grep -q CHANGE agent.token", "$(dpkg --print-architecture)",
		`sha256sum --quiet -c -`, `apt-get install -y -o DPkg::Lock::Timeout=300 "./$deb"`,
		"install -m 0640 -o root -g wsrc agent.token /etc/wsrc/agent.token",
		"install -m 0640 -o root -g wsrc agent.toml /etc/wsrc/agent.toml",
		"setpriv --reuid=wsrc --regid=wsrc --init-groups wsrc-agent check-config",
		"systemctl restart wsrc-agent.service",
	} {
		if !strings.Contains(script, want) {
			t.Errorf("install.sh lacks %q", want)
		}
	}
	if strings.TrimSpace(files[agentTokenPath].Content) != agentTokenPlaceholder {
		t.Errorf("agent.token is %q, want the placeholder %q", files[agentTokenPath].Content, agentTokenPlaceholder)
	}
	if m := regexp.MustCompile(`(?m)^agent_name = "([^"]*)"`).FindStringSubmatch(config); m == nil || m[1] != cc.Hostname {
		t.Errorf("agent.toml's agent_name is not the host name %q:\n%s", cc.Hostname, config)
	}

	dir := t.TempDir()
	checkScripts(t, dir, map[string]string{"install.sh": script})

	agent := buildCommand(t, dir, "wsrc-agent")
	token := filepath.Join(dir, "agent.token")
	if err := os.WriteFile(token, []byte(testAgentToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	filled := fillPlaceholders(t, "agent.toml in the user data", config, map[string]string{`"/etc/wsrc/agent.token"`: `"` + token + `"`})
	path := filepath.Join(dir, "agent.toml")
	if err := os.WriteFile(path, []byte(filled), 0o600); err != nil {
		t.Fatal(err)
	}
	got := mustRun(t, nil, agent, "check-config", "--config", path)
	for _, want := range []string{"OK\n", "server: " + agentServer, "token: from " + token} {
		if !strings.Contains(got, want) {
			t.Errorf("check-config of the user data's agent.toml:\n%s\nwant %q", got, want)
		}
	}
	if strings.Contains(got, "warning") {
		t.Errorf("check-config of the user data's agent.toml warns:\n%s", got)
	}
}

// TestCloudInitAgentInstall runs the Pi example's install script, as
// cloud-init's runcmd would after write_files, in a sandbox (a throw-away
// copy of this machine, see sandbox_test.go) against the built amd64
// wsrc-agent package, served over HTTP on 127.0.0.1 from this test (the
// sandbox shares this machine's network namespace). The script picks the
// package by `dpkg --print-architecture`, amd64 here. It must refuse, with
// a clear message and nothing installed, a placeholder token, a list
// without this architecture and a package whose SHA-256 differs; and with
// the right values install the package, write agent.toml and agent.token
// as 0640 root:wsrc, pass check-config and restart the service.
func TestCloudInitAgentInstall(t *testing.T) {
	_, files := loadAgentExample(t)
	var deb *debPackage
	for _, d := range amd64Debs(t) {
		if d.Name == "wsrc-agent" {
			deb = d
		}
	}
	data, err := os.ReadFile(deb.Path)
	if err != nil {
		t.Fatal(err)
	}
	name := filepath.Base(deb.Path)
	sum := sha256.Sum256(data)
	wrong := sha256.Sum256(append(data, 0))

	// The package, as the user would publish it. /ping is the sandbox's
	// network check and is not counted.
	var downloads atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ping":
		case "/" + name:
			downloads.Add(1)
			w.Write(data)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)

	sb := newSandbox(t, t.TempDir())
	installRecorders(sb)
	if out, rc := sb.run("curl -fsS " + srv.URL + "/ping"); rc != 0 {
		t.Fatalf("the sandbox cannot reach the test's HTTP server at %s; it should share this machine's network namespace (exit status %d):\n%s", srv.URL, rc, out)
	}

	script := fillPlaceholders(t, "install.sh", files[agentScriptPath].Content, map[string]string{agentURLPlaceholder: "DEB_BASE_URL=" + srv.URL})
	// A line as `sha256sum` prints it, for a file in dir.
	withSum := func(s [sha256.Size]byte, dir string) string {
		return fillPlaceholders(t, "install.sh", script, map[string]string{agentSumPlaceholder: hex.EncodeToString(s[:]) + "  " + dir + name})
	}
	token := fillPlaceholders(t, "agent.token", files[agentTokenPath].Content, map[string]string{agentTokenPlaceholder: testAgentToken})

	refused := []struct {
		name, script, token, want string
		downloads                 int32
	}{
		{"placeholder token", withSum(sum, ""), files[agentTokenPath].Content, "wsrc: agent.token still holds the placeholder", 0},
		{"no amd64 package", script, token, "wsrc: DEB_SHA256SUMS has 0 lines for a wsrc-agent package of this architecture (amd64), not 1", 0},
		{"wrong SHA-256", withSum(wrong, ""), token, "wsrc: " + srv.URL + "/" + name + " does not have the SHA-256 in DEB_SHA256SUMS: not installing it", 1},
	}
	for _, c := range refused {
		downloads.Store(0)
		out, rc := runAgentScript(sb, files, c.script, c.token)
		if rc == 0 || !strings.Contains(out, c.want) {
			t.Errorf("%s: exit status %d, output:\n%s\nwant a failure saying %q", c.name, rc, out, c.want)
		}
		if got := downloads.Load(); got != c.downloads {
			t.Errorf("%s: %d downloads, want %d", c.name, got, c.downloads)
		}
		if got := sb.status("wsrc-agent"); got != "" {
			t.Errorf("%s: wsrc-agent is %q, want not installed", c.name, got)
		}
		for _, p := range []string{"/usr/bin/wsrc-agent", "/etc/wsrc/agent.token", "'/root/wsrc/" + name + "'"} {
			if sb.exists(p) {
				t.Errorf("%s: %s exists", c.name, p)
			}
		}
		if calls := serviceCalls(sb); len(calls) > 0 {
			t.Errorf("%s: the script called %q", c.name, calls)
		}
	}

	downloads.Store(0)
	out, rc := runAgentScript(sb, files, withSum(sum, "build/deb/"), token)
	if rc != 0 {
		t.Fatalf("install.sh with the right values: exit status %d\n%s", rc, out)
	}
	if !strings.Contains(out, "OK\nconfiguration file: /etc/wsrc/agent.toml\n") {
		t.Errorf("install.sh did not run check-config on /etc/wsrc/agent.toml:\n%s", out)
	}
	if got := downloads.Load(); got != 1 {
		t.Errorf("%d downloads, want 1", got)
	}
	if got, want := sb.status("wsrc-agent"), "install ok installed "+deb.Control["Version"]; got != want {
		t.Errorf("wsrc-agent is %q, want %q", got, want)
	}
	for path, want := range map[string]string{"/etc/wsrc/agent.toml": files[agentConfigPath].Content, "/etc/wsrc/agent.token": token} {
		if got := sb.must("cat " + path); got != strings.TrimRight(want, "\n") {
			t.Errorf("%s holds\n%s\nwant\n%s", path, got, want)
		}
	}
	if got := sb.must("stat -c '%U:%G %a' /etc/wsrc/agent.token"); got != "root:wsrc 640" {
		t.Errorf("/etc/wsrc/agent.token is %s, want root:wsrc 640", got)
	}
	checkConfig(t, sb, "agent", "server: "+agentServer, "after the cloud-init script")
	checkConfig(t, sb, "agent", "token: from /etc/wsrc/agent.token", "after the cloud-init script")
	if got, want := serviceCalls(sb), []string{"systemctl restart wsrc-agent.service"}; !slices.Equal(got, want) {
		t.Errorf("the script called %q, want %q", got, want)
	}
}

// runAgentScript does in the sandbox what cloud-init does with the agent
// example: write_files (with this script and token in place of the
// example's), then the script as root. It returns the script's output and
// exit status.
func runAgentScript(sb *sandbox, files map[string]writeFile, script, token string) (string, int) {
	sb.t.Helper()
	sb.must("rm -rf /root/wsrc")
	for _, f := range files {
		content := f.Content
		switch f.Path {
		case agentScriptPath:
			content = script
		case agentTokenPath:
			content = token
		}
		const eof = "WSRC_TEST_EOF"
		if strings.Contains(content, eof) || !strings.HasSuffix(content, "\n") {
			sb.t.Fatalf("%s: cannot write it with a here-document", f.Path)
		}
		user, group, _ := strings.Cut(f.Owner, ":")
		sb.must(fmt.Sprintf("mkdir -p %s && cat >%s <<'%s'\n%s%s\nchown %s:%s %s && chmod %s %s",
			filepath.Dir(f.Path), f.Path, eof, content, eof, user, group, f.Path, f.Permissions, f.Path))
	}
	return sb.run(agentScriptPath)
}
