package piboot

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// repoRoot is the source tree's top directory.
func repoRoot(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("no caller information")
	}
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// bootconfScript is the configurator as it is installed in the image.
func bootconfScript(t testing.TB) string {
	return filepath.Join(repoRoot(t), "deploy", "pi-image", "rootfs", "usr", "lib", "wsrc-pi", "bootconf")
}

// fakeRoot is a scratch root directory for one bootconf run, with
// recorders in place of systemctl and ssh-keygen.
type fakeRoot struct {
	dir  string // the root
	log  string // commands run: one line each
	proc string // stands in for /proc/sys/kernel/hostname
	// extraEnv is added to bootconf's environment.
	extraEnv []string
}

func newFakeRoot(t testing.TB) *fakeRoot {
	t.Helper()
	d := t.TempDir()
	r := &fakeRoot{dir: filepath.Join(d, "root"), log: filepath.Join(d, "calls"), proc: filepath.Join(d, "proc-hostname")}
	for _, p := range []string{"boot/firmware", "etc/default", "var/lib", "root"} {
		if err := os.MkdirAll(filepath.Join(r.dir, p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	r.write(t, "etc/hosts", "127.0.0.1\tlocalhost\n127.0.1.1\twsrc-pi\n", 0o644)
	r.write(t, "etc/hostname", "wsrc-pi\n", 0o644)
	for _, tool := range []string{"systemctl", "ssh-keygen"} {
		script := "#!/bin/sh\necho \"" + tool + " $*\" >>'" + r.log + "'\n"
		if err := os.WriteFile(filepath.Join(d, tool), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

func (r *fakeRoot) write(t testing.TB, rel, content string, mode os.FileMode) {
	t.Helper()
	p := filepath.Join(r.dir, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

// read returns a file of the root, "" when it does not exist.
func (r *fakeRoot) read(t testing.TB, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(r.dir, rel))
	if os.IsNotExist(err) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func (r *fakeRoot) calls(t testing.TB) []string {
	t.Helper()
	b, err := os.ReadFile(r.log)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

// run runs bootconf once; it returns the exit status and the output.
func (r *fakeRoot) run(t testing.TB) (int, string) {
	t.Helper()
	cmd := exec.Command("sh", bootconfScript(t))
	d := filepath.Dir(r.log)
	cmd.Env = append(os.Environ(),
		"WSRC_PI_ROOT="+r.dir,
		"WSRC_PI_SYSTEMCTL="+filepath.Join(d, "systemctl"),
		"WSRC_PI_SSH_KEYGEN="+filepath.Join(d, "ssh-keygen"),
		"WSRC_PI_PROC_HOSTNAME="+r.proc,
		"WSRC_PI_TOKEN_GROUP="+strconv.Itoa(os.Getgid()),
		"TMPDIR="+d,
	)
	cmd.Env = append(cmd.Env, r.extraEnv...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(out)
		}
		t.Fatalf("running bootconf: %v", err)
	}
	return 0, string(out)
}

func requireShell(t testing.TB) {
	t.Helper()
	for _, tool := range []string{"sh", "sed", "grep", "tr", "sha256sum", "mktemp"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not found: %v", tool, err)
		}
	}
}

const (
	edKey  = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx2nL8ZcFqX6bV0nq2b6ZGJ6Vt2hQ7p0Z8xWmK9fJc3 me@pc"
	rsaKey = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7= other"
)

func TestBootconfFull(t *testing.T) {
	requireShell(t)
	r := newFakeRoot(t)
	// A Windows editor: byte order mark, CRLF, blanks, quotes, lower case.
	conf := "\ufeff# my Pi\r\n" +
		"SERVER = \"wss://relay.example.org:4221/\"\r\n" +
		"TOKEN=s3cr3t-T0ken_value.xyz\r\n" +
		"  name=lab-pi-1  \r\n" +
		"BACKEND=ccid,pcsc\r\n" +
		"ARGS=--reader-include *Omnikey*   --log-level debug\r\n" +
		"HOSTNAME=lab-pi-1\r\n" +
		"SSH_AUTHORIZED_KEY=" + edKey + "\r\n" +
		"SSH_AUTHORIZED_KEY=" + rsaKey + "\r\n" +
		"NTP=ntp1.example.org  192.0.2.1\r\n" +
		"WIFI_SSID=My Net #1\r\n" +
		"WIFI_PSK='pass word!'\r\n" +
		"WIFI_COUNTRY=de\r\n"
	r.write(t, "boot/firmware/wsrc-agent.conf", conf, 0o644)
	code, out := r.run(t)
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, out)
	}

	def := r.read(t, "etc/default/wsrc-agent")
	for _, want := range []string{
		`WSRC_AGENT_SERVER="wss://relay.example.org:4221/"`,
		`WSRC_AGENT_TOKEN_FILE="/etc/wsrc/agent.token"`,
		`WSRC_AGENT_ARGS="--backend ccid,pcsc --agent-name lab-pi-1 --reader-include *Omnikey* --log-level debug"`,
	} {
		if !strings.Contains(def, want+"\n") {
			t.Errorf("/etc/default/wsrc-agent lacks %s:\n%s", want, def)
		}
	}
	if strings.Contains(def, "s3cr3t") {
		t.Errorf("the token itself is in /etc/default/wsrc-agent:\n%s", def)
	}
	if got := r.read(t, "etc/wsrc/agent.token"); got != "s3cr3t-T0ken_value.xyz\n" {
		t.Errorf("/etc/wsrc/agent.token = %q", got)
	}
	if fi, err := os.Stat(filepath.Join(r.dir, "etc/wsrc/agent.token")); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("/etc/wsrc/agent.token: %v, mode %v; want 0640", err, fi.Mode())
	}
	if got := r.read(t, "etc/hostname"); got != "lab-pi-1\n" {
		t.Errorf("/etc/hostname = %q", got)
	}
	if got := r.read(t, "etc/hosts"); !strings.Contains(got, "127.0.1.1\tlab-pi-1\n") || strings.Contains(got, "wsrc-pi") {
		t.Errorf("/etc/hosts:\n%s", got)
	}
	if b, _ := os.ReadFile(r.proc); string(b) != "lab-pi-1\n" {
		t.Errorf("kernel host name set to %q", b)
	}
	keys := r.read(t, "root/.ssh/authorized_keys")
	if !strings.Contains(keys, edKey+"\n") || !strings.Contains(keys, rsaKey+"\n") {
		t.Errorf("authorized_keys:\n%s", keys)
	}
	if got := r.read(t, "etc/systemd/timesyncd.conf.d/50-wsrc-pi.conf"); got != "[Time]\nNTP=ntp1.example.org 192.0.2.1\n" {
		t.Errorf("timesyncd drop-in = %q", got)
	}
	wpa := r.read(t, "etc/wpa_supplicant/wpa_supplicant-wlan0.conf")
	for _, want := range []string{"country=DE\n", "\tssid=\"My Net #1\"\n", "\tpsk=\"pass word!\"\n"} {
		if !strings.Contains(wpa, want) {
			t.Errorf("wpa_supplicant conf lacks %q:\n%s", want, wpa)
		}
	}
	wantCalls := []string{
		"systemctl --quiet enable wsrc-agent.service",
		"systemctl --no-block restart wsrc-agent.service",
		"ssh-keygen -A",
		"systemctl --quiet enable ssh.service",
		"systemctl --no-block start ssh.service",
		"systemctl --no-block try-restart systemd-timesyncd.service",
		"systemctl --quiet enable wpa_supplicant@wlan0.service",
		"systemctl --no-block restart wpa_supplicant@wlan0.service",
	}
	if got := r.calls(t); strings.Join(got, "\n") != strings.Join(wantCalls, "\n") {
		t.Errorf("commands:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantCalls, "\n"))
	}
	status := r.read(t, "boot/firmware/wsrc-agent-status.txt")
	if !strings.HasPrefix(status, "OK: wsrc-agent.conf applied\r\n") || !strings.Contains(status, "ssh: 2 key(s) for root") {
		t.Errorf("status file:\n%s", status)
	}
	for _, secret := range []string{"s3cr3t", "pass word"} {
		if strings.Contains(status, secret) || strings.Contains(out, secret) {
			t.Errorf("secret %q shown in the status or the log:\n%s\n%s", secret, status, out)
		}
	}

	// Unchanged: nothing is done again.
	if err := os.Remove(r.log); err != nil {
		t.Fatal(err)
	}
	if code, out := r.run(t); code != 0 || !strings.Contains(out, "unchanged") || len(r.calls(t)) != 0 {
		t.Errorf("second run: exit %d, calls %q:\n%s", code, r.calls(t), out)
	}

	// Edited again without TOKEN: the token file goes, the rest stays.
	r.write(t, "boot/firmware/wsrc-agent.conf", "SERVER=wss://other.example.org/\n", 0o644)
	if code, out := r.run(t); code != 0 {
		t.Fatalf("third run: exit %d:\n%s", code, out)
	}
	if got := r.read(t, "etc/wsrc/agent.token"); got != "" {
		t.Errorf("token file left: %q", got)
	}
	if def := r.read(t, "etc/default/wsrc-agent"); strings.Contains(def, "TOKEN") || !strings.Contains(def, `WSRC_AGENT_ARGS=""`) {
		t.Errorf("/etc/default/wsrc-agent:\n%s", def)
	}
	if got := r.read(t, "etc/hostname"); got != "lab-pi-1\n" {
		t.Errorf("host name not kept: %q", got)
	}
}

func TestBootconfShippedTemplate(t *testing.T) {
	requireShell(t)
	r := newFakeRoot(t)
	tmpl, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy", "pi-image", "bootfs", "wsrc-agent.conf"))
	if err != nil {
		t.Fatal(err)
	}
	r.write(t, "boot/firmware/wsrc-agent.conf", string(tmpl), 0o644)
	code, out := r.run(t)
	if code != 0 || !strings.Contains(out, "agent: unchanged (no SERVER)") {
		t.Fatalf("the template as shipped: exit %d:\n%s", code, out)
	}
	if calls := r.calls(t); len(calls) != 0 {
		t.Errorf("the template changed something: %q", calls)
	}
	if r.read(t, "etc/default/wsrc-agent") != "" {
		t.Error("the template wrote /etc/default/wsrc-agent")
	}

	// The commented-out examples, uncommented together, are a valid file.
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(string(tmpl)))
	example := regexp.MustCompile(`^#([A-Z_]+=.*)$`)
	for sc.Scan() {
		if m := example.FindStringSubmatch(sc.Text()); m != nil && !strings.HasSuffix(m[1], "=") && !strings.Contains(m[1], "AAAA...") {
			lines = append(lines, m[1])
		}
	}
	if len(lines) < 5 {
		t.Fatalf("found only %d example lines in the template", len(lines))
	}
	r2 := newFakeRoot(t)
	r2.write(t, "boot/firmware/wsrc-agent.conf", strings.Join(lines, "\n")+"\n", 0o644)
	if code, out := r2.run(t); code != 0 {
		t.Errorf("the template's examples, uncommented:\n%s\nexit %d:\n%s", strings.Join(lines, "\n"), code, out)
	}
}

func TestBootconfRefusals(t *testing.T) {
	requireShell(t)
	tests := []struct {
		name, conf, want string
	}{
		{"unknown key", "SERVER=ws://127.0.0.1:4221/\nSEVRER=x\n", `line 2: unknown setting "SEVRER"`},
		{"no equals", "SERVER ws://x/\n", "line 1: not a KEY=value line"},
		{"http url", "SERVER=https://relay.example.org/\n", "line 1: SERVER must be a ws:// or wss:// URL"},
		{"empty host", "SERVER=wss:///path\n", "line 1: SERVER must be"},
		{"command substitution", "SERVER=wss://x/$(reboot)\n", "line 1: SERVER must be"},
		{"backtick", "SERVER=wss://x/`id`\n", "line 1: SERVER must be"},
		{"space in url", "SERVER=wss://x/a b\n", "line 1: SERVER must be"},
		{"quote in token", "SERVER=wss://x/\nTOKEN=ab\"c\n", "line 2: TOKEN is longer"},
		{"space in token", "SERVER=wss://x/\nTOKEN=ab c\n", "line 2: TOKEN is longer"},
		{"long token", "SERVER=wss://x/\nTOKEN=" + strings.Repeat("a", 513) + "\n", "line 2: TOKEN is longer"},
		{"non-ascii token", "SERVER=wss://x/\nTOKEN=abc\u00e9\n", "line 2: TOKEN is longer"},
		{"token without server", "TOKEN=abc\n", "TOKEN is set but SERVER is not"},
		{"args with quotes", "SERVER=wss://x/\nARGS=--agent-name \"a b\"\n", "line 2: ARGS may hold"},
		{"args with semicolon", "SERVER=wss://x/\nARGS=--sim 1; reboot\n", "line 2: ARGS may hold"},
		{"bad backend", "SERVER=wss://x/\nBACKEND=usb\n", "line 2: BACKEND must be"},
		{"bad name", "SERVER=wss://x/\nNAME=a/b\n", "line 2: NAME must be"},
		{"dotted hostname", "HOSTNAME=pi.example.org\n", "line 1: HOSTNAME must be"},
		{"hostname dash", "HOSTNAME=-pi\n", "line 1: HOSTNAME must be"},
		{"ssh maybe", "SSH=maybe\n", "line 1: SSH must be yes or no"},
		{"bad key", "SSH_AUTHORIZED_KEY=from=\"x\" ssh-ed25519 AAAA\n", "line 1: SSH_AUTHORIZED_KEY must be"},
		{"private key", "SSH_AUTHORIZED_KEY=-----BEGIN OPENSSH PRIVATE KEY-----\n", "line 1: SSH_AUTHORIZED_KEY must be"},
		{"short psk", "WIFI_SSID=net\nWIFI_PSK=short\n", "line 2: WIFI_PSK must be"},
		{"psk without ssid", "WIFI_PSK=longenough\n", "WIFI_PSK or WIFI_COUNTRY is set but WIFI_SSID is not"},
		{"ssid with quote", "WIFI_SSID=my\"net\n", "line 1: WIFI_SSID must be"},
		{"country", "WIFI_SSID=n\nWIFI_COUNTRY=GER\n", "line 2: WIFI_COUNTRY must be"},
		{"ntp", "NTP=ntp;reboot\n", "line 1: NTP must be"},
		{"twice", "SERVER=wss://x/\nSERVER=wss://y/\n", "line 2: SERVER is set twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newFakeRoot(t)
			r.write(t, "etc/default/wsrc-agent", "# before\n", 0o644)
			// A valid setting in the same file is not applied either.
			valid := "HOSTNAME=changed\n"
			if strings.Contains(tt.conf, "HOSTNAME") {
				valid = "NTP=ntp.example.org\n"
			}
			r.write(t, "boot/firmware/wsrc-agent.conf", valid+tt.conf, 0o644)
			code, out := r.run(t)
			if code != 1 {
				t.Fatalf("exit %d, want 1:\n%s", code, out)
			}
			status := r.read(t, "boot/firmware/wsrc-agent-status.txt")
			// Line numbers in the table count from the case's first line.
			want := shiftLine(tt.want)
			if !strings.HasPrefix(status, "ERROR: wsrc-agent.conf not applied") || !strings.Contains(status, want) {
				t.Errorf("status lacks %q:\n%s", want, status)
			}
			if calls := r.calls(t); len(calls) != 0 {
				t.Errorf("commands run for a refused file: %q", calls)
			}
			if got := r.read(t, "etc/default/wsrc-agent"); got != "# before\n" {
				t.Errorf("/etc/default/wsrc-agent changed: %q", got)
			}
			if got := r.read(t, "etc/hostname"); got != "wsrc-pi\n" {
				t.Errorf("/etc/hostname changed: %q", got)
			}
			if got := r.read(t, "etc/systemd/timesyncd.conf.d/50-wsrc-pi.conf"); got != "" {
				t.Errorf("time servers changed: %q", got)
			}
			// Refused once, it is not retried at every boot.
			if code, out := r.run(t); code != 0 || !strings.Contains(out, "unchanged") {
				t.Errorf("second run: exit %d:\n%s", code, out)
			}
		})
	}
}

// shiftLine adds one to the "line N" of a message: the refusal cases get
// a HOSTNAME line in front.
func shiftLine(msg string) string {
	return lineNo.ReplaceAllStringFunc(msg, func(m string) string {
		n, _ := strconv.Atoi(strings.TrimPrefix(m, "line "))
		return "line " + strconv.Itoa(n+1)
	})
}

var lineNo = regexp.MustCompile(`^line [0-9]+`)

func TestBootconfSSHFile(t *testing.T) {
	requireShell(t)
	r := newFakeRoot(t)
	r.write(t, "boot/firmware/ssh", "", 0o644)
	code, out := r.run(t)
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	want := "ssh-keygen -A\nsystemctl --quiet enable ssh.service\nsystemctl --no-block start ssh.service"
	if got := strings.Join(r.calls(t), "\n"); got != want {
		t.Errorf("commands:\n%s\nwant:\n%s", got, want)
	}
	if _, err := os.Stat(filepath.Join(r.dir, "boot/firmware/ssh")); !os.IsNotExist(err) {
		t.Errorf("the ssh file is still there: %v", err)
	}
}

// generatedName matches a host name made by bootconf's first boot.
var generatedName = regexp.MustCompile(`wsrc-pi-[0-9a-f]{8}`)

// TestBootconfUniqueHostname: the first boot renames a Pi still called
// wsrc-pi after its serial number (else its machine id), once; HOSTNAME in
// the file and a name set on the Pi win.
func TestBootconfUniqueHostname(t *testing.T) {
	requireShell(t)
	const conf = "SERVER=wss://relay.example.org:4221/\n"
	for _, tt := range []struct {
		name                       string
		serial, machineID, etcName string
		conf                       string
		want                       string // host name after the run
		status                     string // in the status file, "" for no mention of a new name
	}{
		{"serial", "10000000a1B2c3D4\x00", "0123456789abcdef0123456789abcdef\n", "wsrc-pi\n", conf,
			"wsrc-pi-a1b2c3d4", "host name: wsrc-pi-a1b2c3d4 (from the serial number"},
		{"machine id", "", "0123456789abcdef0123456789abcdef\n", "wsrc-pi\n", conf,
			"wsrc-pi-01234567", "host name: wsrc-pi-01234567 (from the machine id"},
		{"zero serial", "0000000000000000\x00", "fedcba9876543210fedcba9876543210\n", "wsrc-pi\n", conf,
			"wsrc-pi-fedcba98", "host name: wsrc-pi-fedcba98 (from the machine id"},
		{"short serial", "a1b2\x00", "", "wsrc-pi\n", conf, "wsrc-pi", ""},
		{"no identity", "", "", "wsrc-pi\n", conf, "wsrc-pi", ""},
		{"HOSTNAME wins", "10000000a1b2c3d4\x00", "", "wsrc-pi\n", conf + "HOSTNAME=lab-pi-7\n", "lab-pi-7", ""},
		{"named on the Pi", "10000000a1b2c3d4\x00", "", "bench-3\n", conf, "bench-3", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := newFakeRoot(t)
			serial := filepath.Join(filepath.Dir(r.log), "serial-number")
			if tt.serial != "" {
				if err := os.WriteFile(serial, []byte(tt.serial), 0o444); err != nil {
					t.Fatal(err)
				}
			}
			if tt.machineID != "" {
				r.write(t, "etc/machine-id", tt.machineID, 0o444)
			}
			r.write(t, "etc/hostname", tt.etcName, 0o644)
			r.write(t, "boot/firmware/wsrc-agent.conf", tt.conf, 0o644)
			r.extraEnv = []string{"WSRC_PI_SERIAL=" + serial}
			if code, out := r.run(t); code != 0 {
				t.Fatalf("exit %d:\n%s", code, out)
			}
			if got := r.read(t, "etc/hostname"); got != tt.want+"\n" {
				t.Errorf("/etc/hostname = %q, want %q", got, tt.want)
			}
			renamed := tt.want != strings.TrimSpace(tt.etcName) && !strings.Contains(tt.conf, "HOSTNAME=")
			if renamed {
				if got := r.read(t, "etc/hosts"); !strings.Contains(got, "127.0.1.1\t"+tt.want+"\n") {
					t.Errorf("/etc/hosts:\n%s", got)
				}
				if got, _ := os.ReadFile(r.proc); string(got) != tt.want+"\n" {
					t.Errorf("kernel host name %q", got)
				}
			}
			st := r.read(t, "boot/firmware/wsrc-agent-status.txt")
			if tt.status != "" && !strings.Contains(st, tt.status) {
				t.Errorf("status file lacks %q:\n%s", tt.status, st)
			}
			if tt.status == "" && generatedName.MatchString(st) {
				t.Errorf("status file names a generated host name:\n%s", st)
			}

			// Once only: a Pi named wsrc-pi again later (by the admin,
			// or HOSTNAME=wsrc-pi) keeps that name, file changed or not.
			r.write(t, "etc/hostname", "wsrc-pi\n", 0o644)
			r.write(t, "boot/firmware/wsrc-agent.conf", conf+"HOSTNAME=wsrc-pi\n", 0o644)
			if code, out := r.run(t); code != 0 {
				t.Fatalf("second boot: exit %d:\n%s", code, out)
			}
			if code, out := r.run(t); code != 0 || generatedName.MatchString(out) {
				t.Fatalf("third boot: exit %d:\n%s", code, out)
			}
			if got := r.read(t, "etc/hostname"); got != "wsrc-pi\n" {
				t.Errorf("later boots renamed the Pi: /etc/hostname = %q", got)
			}
		})
	}
}

func TestBootconfNoFile(t *testing.T) {
	requireShell(t)
	r := newFakeRoot(t)
	code, out := r.run(t)
	if code != 0 || len(r.calls(t)) != 0 || !strings.Contains(out, "nothing to apply") {
		t.Errorf("exit %d, calls %q:\n%s", code, r.calls(t), out)
	}
}

func TestBootconfSSHOff(t *testing.T) {
	requireShell(t)
	r := newFakeRoot(t)
	r.write(t, "boot/firmware/wsrc-agent.conf", "SSH=no\nSSH_AUTHORIZED_KEY="+edKey+"\n", 0o644)
	if code, out := r.run(t); code != 0 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	want := "systemctl --quiet disable ssh.service\nsystemctl --no-block stop ssh.service"
	if got := strings.Join(r.calls(t), "\n"); got != want {
		t.Errorf("commands:\n%s\nwant:\n%s", got, want)
	}
}

// envLine is the grammar of every line bootconf may write to
// /etc/default/wsrc-agent: safe for systemd's EnvironmentFile= and for a
// shell that sources the file.
var envLine = regexp.MustCompile(`^(#[ -~]*|WSRC_AGENT_(SERVER|TOKEN_FILE|ARGS)="[^"\\$` + "`" + `\x00-\x1f\x7f-\xff]*")$`)

func FuzzBootconf(f *testing.F) {
	if _, err := exec.LookPath("sh"); err != nil {
		f.Skip("no sh")
	}
	f.Add("SERVER=wss://relay.example.org:4221/\nTOKEN=abc\nARGS=--sim 1\n")
	f.Add("SERVER=\"ws://127.0.0.1:4221/\"\r\nNAME=x\r\nBACKEND=sim\r\n")
	f.Add("SERVER=wss://x/$(id)\n")
	f.Add("SERVER=wss://x/\nTOKEN='a\"b'\n")
	f.Add("server=wss://[::1]:4221/p?q=1#f\nargs=--reader-include *x*\n")
	f.Add("SERVER=wss://x/\\\nTOKEN=\\\n")
	f.Fuzz(func(t *testing.T, conf string) {
		r := newFakeRoot(t)
		r.write(t, "boot/firmware/wsrc-agent.conf", conf, 0o644)
		code, out := r.run(t)
		if code != 0 && code != 1 {
			t.Fatalf("exit %d:\n%s", code, out)
		}
		def := r.read(t, "etc/default/wsrc-agent")
		if code != 0 && def != "" {
			t.Fatalf("refused file still wrote /etc/default/wsrc-agent:\n%s", def)
		}
		for _, l := range strings.Split(strings.TrimSuffix(def, "\n"), "\n") {
			if def != "" && !envLine.MatchString(l) {
				t.Fatalf("unsafe line in /etc/default/wsrc-agent: %q (from %q)", l, conf)
			}
		}
		for _, c := range r.calls(t) {
			if !strings.HasPrefix(c, "systemctl ") && c != "ssh-keygen -A" {
				t.Fatalf("unexpected command %q", c)
			}
		}
	})
}
