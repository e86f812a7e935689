package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gorilla/websocket"

	"github.com/wsrc-go/wsrc/agent/agenttest"
)

// writeFile writes content to name in a fresh directory and returns its
// path.
func writeFile(t *testing.T, name, content string, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	return path
}

// envOf is a getenv over a map.
func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// TestExampleConfig: docs/examples/agent.toml passes check-config as
// shipped, and every commented-out setting in it is a known key.
func TestExampleConfig(t *testing.T) {
	example := filepath.Join("..", "..", "docs", "examples", "agent.toml")
	code, out, errs := runCmd(t, noEnv, "check-config", "--config", example)
	if code != 0 || !strings.HasPrefix(out, "OK\n") || !strings.Contains(out, "backends: ccid,pcsc") {
		t.Fatalf("exit %d:\n%s%s", code, out, errs)
	}
	data, err := os.ReadFile(example)
	if err != nil {
		t.Fatal(err)
	}
	// Uncomment every "#key = value" line (token and token_file are
	// exclusive, sim backends conflict with reader patterns: check the
	// keys by decoding only).
	var lines []string
	for l := range strings.SplitSeq(string(data), "\n") {
		if k, _, ok := strings.Cut(strings.TrimPrefix(l, "#"), " = "); ok && strings.HasPrefix(l, "#") && !strings.Contains(k, " ") {
			l = l[1:]
		}
		lines = append(lines, l)
	}
	all := writeFile(t, "all.toml", strings.Join(lines, "\n"), 0o600)
	o, err := parseArgs([]string{"--config", all}, noLookup, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := o.loadFile(); err != nil {
		t.Fatalf("the example's settings, all uncommented: %v", err)
	}
	if !o.file.IsDefined("tls.pin_sha256") || o.fileToken == "" || o.tokenFile == "" || !o.simSet {
		t.Errorf("uncommenting missed settings: %+v", o)
	}
}

// TestConfigErrors: every problem is reported, each with file, line and
// key, and the agent exits 2 before doing anything.
func TestConfigErrors(t *testing.T) {
	file := writeFile(t, "agent.toml", `server = "wss://relay.example/"
backend = "pcsc,floppy"
log_level = "loud"
reader_exclude = ["ok*", "[bad"]
token = "has space"
colour = "blue"
[tls]
pin_sha256 = ["`+strings.Repeat("ab", 32)+`", "nope"]
ca_file = "/nonexistent/ca.pem"
`, 0o600)
	for _, cmd := range [][]string{{"check-config", "--config", file}, {"--config", file}} {
		code, out, errs := runCmd(t, noEnv, cmd...)
		if code != 2 || out != "" {
			t.Errorf("%q: exit %d, stdout %q", cmd, code, out)
		}
		want := []string{file + ":6: colour: unknown setting (misspelt?)"}
		if strings.Contains(errs, "unknown setting") {
			// Unknown keys stop the decoding: nothing else is checked.
			if got := strings.TrimSpace(errs); got != "wsrc-agent: "+want[0] {
				t.Errorf("%q: stderr\n%s\nwant %q", cmd, errs, want)
			}
			continue
		}
		t.Errorf("%q: no unknown-key error:\n%s", cmd, errs)
	}

	// Without the unknown key, every value problem is listed.
	file = writeFile(t, "agent.toml", `server = "wss://relay.example/"
backend = "pcsc"
log_level = "loud"
reader_exclude = ["ok*", "[bad"]
token = "has space"
[tls]
pin_sha256 = ["`+strings.Repeat("ab", 32)+`", "nope"]
ca_file = "/nonexistent/ca.pem"
`, 0o600)
	code, _, errs := runCmd(t, noEnv, "check-config", "--config", file)
	for _, want := range []string{
		file + `:3: log_level: "loud": want debug, info, warn or error`,
		file + `:5: token: the token has a character that is not visible ASCII at byte 3`,
		file + `:7: tls.pin_sha256[1]: pin "nope"`,
		file + `:8: tls.ca_file: reading CA file: open /nonexistent/ca.pem`,
		file + `:4: reader_exclude[1]: bad pattern "[bad"`,
	} {
		if !strings.Contains(errs, "wsrc-agent: "+want) {
			t.Errorf("stderr lacks %q:\n%s", want, errs)
		}
	}
	if code != 2 {
		t.Errorf("exit %d", code)
	}

	for _, tc := range []struct{ doc, want string }{
		{"server = 4221\n", ":1: server: incompatible types"},
		{"server = \"ws://a/\"\n[tls\n", ":3: expected '.' or ']' to end table name"},
		{"token = \"abc\"\ntoken_file = \"/x\"\n", ":2: token_file: token and token_file are both set"},
		{"server = \"ws://a/\"\n[tls]\nca_file = \"/x\"\n", ":3: tls.ca_file: TLS settings need a wss:// server URL"},
		{"backend = \"sim\"\nsim = -1\n", ":2: sim: -1: the number of cards cannot be negative"},
		{"sim = 1\nreader_include = [\"a\"]\n", ":2: reader_include: reader patterns apply to the pcsc and ccid backends"},
	} {
		f := writeFile(t, "agent.toml", tc.doc, 0o600)
		code, _, errs := runCmd(t, noEnv, "check-config", "--config", f)
		if code != 2 || !strings.Contains(errs, f+tc.want) {
			t.Errorf("%q: exit %d, stderr\n%s\nwant %q", tc.doc, code, errs, f+tc.want)
		}
	}
}

// TestConfigPrecedence: flags beat the environment, which beats the
// file, which beats the defaults; a missing default file is no error, a
// missing explicit one is.
func TestConfigPrecedence(t *testing.T) {
	file := writeFile(t, "agent.toml", "server = \"ws://file.example/\"\nsim = 2\nagent_name = \"from-file\"\n", 0o600)
	env := map[string]string{"WSRC_AGENT_CONFIG": file, "WSRC_AGENT_AGENT_NAME": "from-env"}
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{nil, env, "server: ws://file.example/"},
		{nil, map[string]string{"WSRC_AGENT_CONFIG": file, envServer: "ws://env.example/"}, "server: ws://env.example/"},
		{[]string{"--server", "ws://flag.example/"}, map[string]string{"WSRC_AGENT_CONFIG": file, envServer: "ws://env.example/"}, "server: ws://flag.example/"},
		{[]string{"--backend", "sim"}, env, "backends: sim"},
		{[]string{"--config", ""}, env, "configuration file: none"},
	} {
		code, out, errs := runCmd(t, envOf(tc.env), append([]string{"check-config"}, tc.args...)...)
		if code != 0 || !strings.Contains(out, tc.want+"\n") {
			t.Errorf("%q with %v: exit %d, output\n%s%s\nwant %q", tc.args, tc.env, code, out, errs, tc.want)
		}
	}
	o, err := parseArgs(nil, func(k string) (string, bool) { v, ok := env[k]; return v, ok }, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := configure(o, noLookup, true); err != nil {
		t.Fatal(err)
	}
	closeBackends(o.backendList, o.logger())
	if o.agentName != "from-env" || o.sim != 2 || !o.simSet {
		t.Errorf("agent name %q, sim %d (set %v)", o.agentName, o.sim, o.simSet)
	}

	// The default file may be missing; a named one may not, nor may it be
	// a directory.
	saved := defaultConfigPath
	defaultConfigPath = filepath.Join(t.TempDir(), "agent.toml")
	t.Cleanup(func() { defaultConfigPath = saved })
	if code, out, errs := runCmd(t, noEnv, "check-config", "--sim", "1"); code != 0 || !strings.Contains(out, "configuration file: none") {
		t.Errorf("missing default file: exit %d\n%s%s", code, out, errs)
	}
	missing := filepath.Join(t.TempDir(), "agent.toml")
	code, _, errs := runCmd(t, envOf(map[string]string{"WSRC_AGENT_CONFIG": missing}), "check-config", "--sim", "1")
	if code != 2 || !strings.Contains(errs, "WSRC_AGENT_CONFIG: reading configuration: open "+missing) {
		t.Errorf("missing file from the environment: exit %d\n%s", code, errs)
	}
	code, _, errs = runCmd(t, noEnv, "check-config", "--config", t.TempDir())
	if code != 2 || !strings.Contains(errs, "is a directory") {
		t.Errorf("directory: exit %d\n%s", code, errs)
	}
}

// TestTokenSources: where the token comes from, in order, and the
// conflicts that are refused.
func TestTokenSources(t *testing.T) {
	tokFile := writeFile(t, "token", "from-file-token\n", 0o640)
	envFile := writeFile(t, "env-token", "from-env-file\n", 0o600)
	cfgFile := writeFile(t, "agent.toml", "sim = 1\ntoken = \"from-config\"\n", 0o600)
	cfgTokenFile := writeFile(t, "agent.toml", fmt.Sprintf("sim = 1\ntoken_file = %q\n", tokFile), 0o600)
	creds := t.TempDir()
	if err := os.WriteFile(filepath.Join(creds, credentialName), []byte("from-credential"), 0o400); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string // token, or "error: ..." for a refusal
	}{
		{"none", []string{"--sim", "1"}, nil, ""},
		{"flag file beats env", []string{"--sim", "1", "--token-file", tokFile}, map[string]string{envToken: "from-env"}, "from-file-token"},
		{"env token beats config", []string{"--config", cfgFile}, map[string]string{envToken: "from-env"}, "from-env"},
		{"env file", []string{"--config", cfgFile}, map[string]string{"WSRC_AGENT_TOKEN_FILE": envFile}, "from-env-file"},
		{"env both", []string{"--sim", "1"}, map[string]string{envToken: "a", "WSRC_AGENT_TOKEN_FILE": envFile}, "error: WSRC_AGENT_TOKEN and WSRC_AGENT_TOKEN_FILE are both set"},
		{"config token", []string{"--config", cfgFile}, nil, "from-config"},
		{"config token file", []string{"--config", cfgTokenFile}, map[string]string{"CREDENTIALS_DIRECTORY": creds}, "from-file-token"},
		{"credential", []string{"--sim", "1"}, map[string]string{"CREDENTIALS_DIRECTORY": creds}, "from-credential"},
		{"credential dir without it", []string{"--sim", "1"}, map[string]string{"CREDENTIALS_DIRECTORY": t.TempDir()}, ""},
		{"bad env token", []string{"--sim", "1"}, map[string]string{envToken: strings.Repeat("x", 513)}, "error: WSRC_AGENT_TOKEN: the token is longer than 512 bytes"},
		{"empty token file", []string{"--sim", "1", "--token-file", writeFile(t, "empty", "\n", 0o600)}, nil, "error: --token-file: token file "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lookup := func(k string) (string, bool) { v, ok := tc.env[k]; return v, ok }
			o, err := parseArgs(tc.args, lookup, nil)
			if err != nil {
				t.Fatal(err)
			}
			err = configure(o, lookup, true)
			closeBackends(o.backendList, o.logger())
			if want, ok := strings.CutPrefix(tc.want, "error: "); ok {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Fatalf("error %v, want %q", err, want)
				}
				return
			}
			if err != nil || o.token != tc.want {
				t.Fatalf("token %q (%v), want %q", o.token, err, tc.want)
			}
		})
	}

	// readers needs no token: an unreadable token file does not stop it.
	if code, _, errs := runCmd(t, noEnv, "readers", "--sim", "1", "--token-file", "/nonexistent/token"); code != 0 {
		t.Errorf("readers with an unreadable token file: exit %d\n%s", code, errs)
	}

	// A token file every user can read gets a warning.
	open := writeFile(t, "token", "tok", 0o644)
	code, out, _ := runCmd(t, noEnv, "check-config", "--sim", "1", "--token-file", open)
	if code != 0 || !strings.Contains(out, "warning: token file "+open+" is readable by every user") || !strings.Contains(out, "token: from "+open) {
		t.Errorf("exit %d:\n%s", code, out)
	}
}

// TestServeWithConfig: the agent runs on the file's settings: server,
// agent name, simulated cards, and the token in the upgrade request,
// which never appears in the log; a token over ws:// to another machine
// is warned about.
func TestServeWithConfig(t *testing.T) {
	srv := agenttest.NewServer(t)
	file := writeFile(t, "agent.toml", fmt.Sprintf("server = %q\nagent_name = \"pi-9\"\nsim = 1\ntoken = %q\nlog_level = \"debug\"\n",
		srv.URL(), "tok-"+strings.Repeat("z", 20)), 0o600)
	ctx, cancel := context.WithCancel(context.Background())
	var stderr syncBuffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, []string{"--config", file}, noEnv, &syncBuffer{}, &stderr) }()
	conn := srv.Accept()
	if h := conn.Hello(); h.Agent != "pi-9" {
		t.Errorf("agent %q", h.Agent)
	}
	if got := conn.Header().Get("Authorization"); got != "Bearer tok-"+strings.Repeat("z", 20) {
		t.Errorf("Authorization %q", got)
	}
	cancel()
	if code, _ := conn.ExpectClose(); code != websocket.CloseGoingAway {
		t.Errorf("close code %d", code)
	}
	if code := <-done; code != 0 {
		t.Errorf("exit %d:\n%s", code, stderr.String())
	}
	log := stderr.String()
	if strings.Contains(log, strings.Repeat("z", 20)) || !strings.Contains(log, `token_from="`+file+` (token)"`) {
		t.Errorf("log:\n%s", log)
	}
	if strings.Contains(log, "travels unencrypted") {
		t.Errorf("warned about a loopback server:\n%s", log)
	}
	if !cleartextToken("ws://relay.example/", "t") || cleartextToken("wss://relay.example/", "t") ||
		cleartextToken("ws://[::1]:4221/", "t") || cleartextToken("ws://relay.example/", "") {
		t.Error("cleartextToken")
	}
}

// TestServeTokenRefused: a 401 is logged as "server refused the agent
// token" and retried (the program keeps running).
func TestServeTokenRefused(t *testing.T) {
	srv := agenttest.NewServerWith(t, agenttest.Options{Authorize: func(r *http.Request, h http.Header) int {
		return http.StatusUnauthorized
	}})
	ctx, cancel := context.WithCancel(context.Background())
	var stderr syncBuffer
	done := make(chan int, 1)
	env := envOf(map[string]string{envToken: "wrong-token"})
	go func() { done <- run(ctx, []string{"--sim", "1", "--server", srv.URL()}, env, &syncBuffer{}, &stderr) }()
	if r := srv.Refused(); r.Header.Get("Authorization") != "Bearer wrong-token" {
		t.Errorf("Authorization %q", r.Header.Get("Authorization"))
	}
	srv.Refused() // retried
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("exit %d", code)
	}
	log := stderr.String()
	if !strings.Contains(log, `level=ERROR msg="server refused the agent token"`) || strings.Contains(log, "wrong-token") {
		t.Errorf("log:\n%s", log)
	}
}
