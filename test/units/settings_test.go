package units

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/wsrc-go/wsrc/internal/sdnotify"
	"github.com/wsrc-go/wsrc/protocol"
)

// unitFile is a parsed unit file: section → key → every value assigned,
// in order (an empty value is kept: in systemd it resets a list).
type unitFile map[string]map[string][]string

// parseUnit reads systemd's unit syntax (systemd.syntax(7)): [Section]
// headers, Key=Value lines, # and ; comments, backslash continuations.
func parseUnit(text string) (unitFile, error) {
	u := unitFile{}
	section := ""
	lines := strings.Split(text, "\n")
	for i := 0; i < len(lines); i++ {
		line := strings.TrimSpace(lines[i])
		for strings.HasSuffix(line, "\\") && i+1 < len(lines) {
			i++
			line = strings.TrimSuffix(line, "\\") + " " + strings.TrimSpace(lines[i])
		}
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[':
			if !strings.HasSuffix(line, "]") {
				return nil, fmt.Errorf("line %d: bad section header %q", i+1, line)
			}
			section = line[1 : len(line)-1]
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				return nil, fmt.Errorf("line %d: %q is not Key=Value in a section", i+1, line)
			}
			k = strings.TrimSpace(k)
			u[section][k] = append(u[section][k], strings.TrimSpace(v))
		}
	}
	return u, nil
}

// last is the effective value of a single-valued key, and whether it is set.
func (u unitFile) last(section, key string) (string, bool) {
	vs := u[section][key]
	if len(vs) == 0 {
		return "", false
	}
	return vs[len(vs)-1], true
}

// words are the effective items of a list key: each assignment adds its
// words, an empty one clears the list.
func (u unitFile) words(section, key string) []string {
	var w []string
	for _, v := range u[section][key] {
		if v == "" {
			w = nil
			continue
		}
		w = append(w, strings.Fields(v)...)
	}
	return w
}

func loadUnit(t *testing.T, name string) unitFile {
	t.Helper()
	u, err := parseUnit(readUnits(t)[name])
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return u
}

// want is one expected effective setting.
type want struct{ section, key, value string }

func checkSettings(t *testing.T, name string, u unitFile, wants []want) {
	t.Helper()
	for _, w := range wants {
		got, ok := u.last(w.section, w.key)
		if !ok {
			t.Errorf("%s: [%s] %s= not set, want %q", name, w.section, w.key, w.value)
		} else if got != w.value {
			t.Errorf("%s: [%s] %s=%s, want %q", name, w.section, w.key, got, w.value)
		}
	}
}

// common are the settings both services need: what the programs do
// through package sdnotify, the user from wsrc.sysusers.conf, and the
// baseline sandbox.
var common = []want{
	{"Service", "Type", "notify"},
	{"Service", "NotifyAccess", "main"},
	{"Service", "WatchdogSec", "30s"},
	{"Service", "Restart", "on-failure"},
	{"Service", "RestartPreventExitStatus", "2"},
	{"Unit", "StartLimitIntervalSec", "0"},
	{"Service", "User", "wsrc"},
	{"Service", "Group", "wsrc"},
	{"Service", "ConfigurationDirectory", "wsrc"},
	{"Service", "CapabilityBoundingSet", ""},
	{"Service", "NoNewPrivileges", "yes"},
	{"Service", "ProtectSystem", "strict"},
	{"Service", "ProtectHome", "yes"},
	{"Service", "PrivateTmp", "yes"},
	{"Service", "DevicePolicy", "closed"},
	{"Service", "ProtectKernelTunables", "yes"},
	{"Service", "ProtectKernelModules", "yes"},
	{"Service", "ProtectControlGroups", "yes"},
	{"Service", "LockPersonality", "yes"},
	{"Service", "MemoryDenyWriteExecute", "yes"},
	{"Service", "RestrictRealtime", "yes"},
	{"Service", "RestrictNamespaces", "yes"},
	{"Service", "SystemCallArchitectures", "native"},
	{"Install", "WantedBy", "multi-user.target"},
}

func TestServerUnit(t *testing.T) {
	const name = "wsrc-server.service"
	u := loadUnit(t, name)
	checkSettings(t, name, u, append(slices.Clone(common),
		want{"Service", "PrivateDevices", "yes"},
		want{"Service", "PrivateUsers", "yes"},
		want{"Service", "StateDirectory", "wsrc-server"},
		want{"Service", "RuntimeDirectory", "wsrc-server"},
	))
	checkExec(t, name, u, "/usr/bin/wsrc-server", "$WSRC_SERVER_ARGS")
	checkFamilies(t, name, u, "AF_UNIX", "AF_INET", "AF_INET6")
	if got := u.words("Service", "SystemCallFilter"); !slices.Contains(got, "@system-service") {
		t.Errorf("%s: SystemCallFilter %v lacks @system-service", name, got)
	}
	// Socket activation: the service is ordered after both sockets and
	// enabling it enables them.
	also := u.words("Install", "Also")
	after := u.words("Unit", "After")
	for _, s := range sockets {
		if !slices.Contains(also, s) {
			t.Errorf("%s: Also= %v lacks %s", name, also, s)
		}
		if !slices.Contains(after, s) {
			t.Errorf("%s: After= %v lacks %s", name, after, s)
		}
	}
}

func TestAgentUnit(t *testing.T) {
	const name = "wsrc-agent.service"
	u := loadUnit(t, name)
	checkSettings(t, name, u, append(slices.Clone(common),
		want{"Service", "PrivateDevices", "no"}, // /dev/bus/usb
		want{"Service", "StateDirectory", "wsrc-agent"},
		want{"Service", "RuntimeDirectory", "wsrc-agent"},
	))
	checkExec(t, name, u, "/usr/bin/wsrc-agent", "$WSRC_AGENT_ARGS")
	checkFamilies(t, name, u, "AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK")
	if got := u["Service"]["DeviceAllow"]; !slices.Equal(got, []string{"char-usb_device rw"}) {
		t.Errorf("%s: DeviceAllow=%q, want only USB device nodes read-write", name, got)
	}
	if v, ok := u.last("Service", "PrivateUsers"); ok && v != "no" {
		t.Errorf("%s: PrivateUsers=%s hides uid 0 from libudev's hot-plug monitor", name, v)
	}
	// The agent connects out: it must wait for the network, and for
	// pcscd's socket when PC/SC is used.
	after := u.words("Unit", "After")
	for _, dep := range []string{"network-online.target", "pcscd.socket"} {
		if !slices.Contains(after, dep) {
			t.Errorf("%s: After= %v lacks %s", name, after, dep)
		}
	}
	if !slices.Contains(u.words("Unit", "Wants"), "network-online.target") {
		t.Errorf("%s: does not pull in network-online.target", name)
	}
}

func checkExec(t *testing.T, name string, u unitFile, bin, argsVar string) {
	t.Helper()
	exec, _ := u.last("Service", "ExecStart")
	if f := strings.Fields(exec); len(f) == 0 || f[0] != bin || !slices.Contains(f, argsVar) {
		t.Errorf("%s: ExecStart=%s, want %s ... %s", name, exec, bin, argsVar)
	}
	env := u.words("Service", "EnvironmentFile")
	wantEnv := "-/etc/default/" + strings.TrimSuffix(name, ".service")
	if !slices.Contains(env, wantEnv) {
		t.Errorf("%s: EnvironmentFile=%v, want %s (optional)", name, env, wantEnv)
	}
}

func checkFamilies(t *testing.T, name string, u unitFile, families ...string) {
	t.Helper()
	got := u.words("Service", "RestrictAddressFamilies")
	slices.Sort(got)
	w := slices.Clone(families)
	slices.Sort(w)
	if !slices.Equal(got, w) {
		t.Errorf("%s: RestrictAddressFamilies=%v, want %v", name, got, w)
	}
}

// TestSocketUnits checks the socket units against the names package
// sdnotify looks for and the ports package protocol calls the defaults.
func TestSocketUnits(t *testing.T) {
	for _, tc := range []struct {
		unit, fdName string
		port         int
	}{
		{"wsrc-server-user.socket", sdnotify.UserSocket, protocol.DefaultUserPort},
		{"wsrc-server-card.socket", sdnotify.CardSocket, protocol.DefaultCardPort},
	} {
		u := loadUnit(t, tc.unit)
		checkSettings(t, tc.unit, u, []want{
			{"Socket", "ListenStream", fmt.Sprint(tc.port)},
			{"Socket", "FileDescriptorName", tc.fdName},
			{"Socket", "Service", "wsrc-server.service"},
			{"Install", "WantedBy", "sockets.target"},
		})
		if n := len(u["Socket"]["ListenStream"]); n != 1 {
			t.Errorf("%s: %d ListenStream= lines, want 1", tc.unit, n)
		}
	}
}

func TestParseUnit(t *testing.T) {
	u, err := parseUnit("# c\n[Unit]\nA=1\n; c\n[Service]\nB = x \\\n  y\nL=a b\nL=\nL=c\n")
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := u.last("Unit", "A"); v != "1" {
		t.Errorf("A=%q", v)
	}
	if v, _ := u.last("Service", "B"); v != "x  y" {
		t.Errorf("B=%q", v)
	}
	if w := u.words("Service", "L"); !slices.Equal(w, []string{"c"}) {
		t.Errorf("L=%v: an empty assignment must clear the list", w)
	}
	for _, bad := range []string{"A=1\n", "[Unit\n", "[Unit]\nnovalue\n"} {
		if _, err := parseUnit(bad); err == nil {
			t.Errorf("parseUnit(%q): no error", bad)
		}
	}
}

// TestFilesPresent lists what systemd/ must ship (packaging installs
// exactly these).
func TestFilesPresent(t *testing.T) {
	for _, f := range append(append(slices.Clone(allUnits), templates...),
		"wsrc.sysusers.conf", "60-wsrc-agent.rules", "wsrc-agent.polkit.rules",
		"default/wsrc-server", "default/wsrc-agent", "README.md") {
		if _, err := os.Stat(filepath.Join(unitsDir, f)); err != nil {
			t.Errorf("systemd/%s: %v", f, err)
		}
	}
}
