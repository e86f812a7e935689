package daemon

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/wsrc-go/wsrc/internal/auth"
)

// writeConfig writes a configuration file into a temporary directory.
func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "server.toml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// resolveWith parses args (and env) and loads the configuration file.
func resolveWith(t *testing.T, path string, env map[string]string, args ...string) (*settings, error) {
	t.Helper()
	if path != "" {
		args = append(args, "--config", path)
	} else {
		args = append(args, "--config", "")
	}
	o, explicit, err := parseFlags(args, io.Discard, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		return nil, err
	}
	return loadSettings(o, explicit)
}

func cheapHash(t *testing.T, pw string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

var (
	tokAgent = "wsrc_agent-token-for-tests-0000000000000000000"
	tokUser  = "wsrc_user-token-for-tests-00000000000000000000"
)

func TestResolveDefaultsAndPrecedence(t *testing.T) {
	s, err := resolveWith(t, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.userHost != "127.0.0.1" || s.userPort != 4220 || s.cardPort != 4221 || s.store != nil || s.tls.enabled() ||
		s.headerTimeout != defaultHeaderTimeout || s.srv.MessageRate != 1000 {
		t.Fatalf("defaults %+v", s)
	}
	path := writeConfig(t, `
log_level = "warn"
[user_port]
bind_port = 5000
[card_port]
bind_host = "::1"
bind_port = 5001
[limits]
request_timeout = "3m"
ping_interval = "30s"
pong_timeout = "15s"
message_rate = 0
max_conns_per_address = 8
`)
	s, err = resolveWith(t, path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.userPort != 5000 || s.cardHost != "::1" || s.cardPort != 5001 || s.logLevel.String() != "WARN" ||
		s.srv.RequestTimeout != 3*time.Minute || s.srv.PingInterval != 30*time.Second || s.srv.MessageRate != -1 || s.srv.MaxConnsPerAddr != 8 {
		t.Fatalf("from file %+v", s)
	}
	env := map[string]string{"WSRC_SERVER_USER_BIND_PORT": "6000", "WSRC_SERVER_REQUEST_TIMEOUT": "1m"}
	s, err = resolveWith(t, path, env)
	if err != nil {
		t.Fatal(err)
	}
	if s.userPort != 6000 || s.srv.RequestTimeout != time.Minute || s.cardPort != 5001 {
		t.Fatalf("env over file: %+v", s)
	}
	s, err = resolveWith(t, path, env, "--user-bind-port", "7000")
	if err != nil {
		t.Fatal(err)
	}
	if s.userPort != 7000 {
		t.Fatalf("flag over env: %d", s.userPort)
	}
}

// Ports without accounts may listen only on loopback, unless allowed.
func TestOpenPortsNeedLoopback(t *testing.T) {
	_, err := resolveWith(t, "", nil, "--user-bind-host", "0.0.0.0")
	if err == nil || !strings.Contains(err.Error(), "--user-bind-host (or WSRC_SERVER_USER_BIND_HOST): the user port would be open to anyone") {
		t.Fatalf("got %v", err)
	}
	if _, err := resolveWith(t, "", nil, "--user-bind-host", "0.0.0.0", "--insecure-no-auth"); err != nil {
		t.Fatalf("with --insecure-no-auth: %v", err)
	}
	for _, h := range []string{"localhost", "127.0.0.2", "::1"} {
		if _, err := resolveWith(t, "", nil, "--card-bind-host", h); err != nil {
			t.Errorf("%s: %v", h, err)
		}
	}
	path := writeConfig(t, "[card_port]\nbind_host = \"\"\n")
	_, err = resolveWith(t, path, nil)
	if err == nil || !strings.Contains(err.Error(), path+":2: card_port.bind_host: the card port would be open") {
		t.Fatalf("got %v", err)
	}
	// With agents the card port may face the network; the user port
	// stays on loopback.
	path = writeConfig(t, `
[card_port]
bind_host = "0.0.0.0"
[[agent]]
name = "pi"
token_hashes = ["`+auth.HashToken(tokAgent).String()+`"]
`)
	s, err := resolveWith(t, path, nil)
	if err != nil || !s.store.HasAgents() || s.store.HasUsers() {
		t.Fatalf("%v %+v", err, s)
	}
}

// Every mistake is reported with its line and key, all at once.
func TestConfigErrors(t *testing.T) {
	pw := cheapHash(t, "x")
	cases := []struct{ text, want string }{
		{"log_level = \"loud\"\n", ":1: log_level: \"loud\" is not a log level"},
		{"[limits]\nhello_timeout = 10\n", ":2: limits.hello_timeout: 10ns is too short"},
		{"[limits]\nping_interval = \"10s\"\npong_timeout = \"20s\"\n", ":3: limits.pong_timeout: pong timeout 20s exceeds the ping interval 10s"},
		{"[limits]\nping_interval = \"10s\"\n", ":2: limits.ping_interval: pong timeout 20s exceeds the ping interval 10s"},
		{"[limits]\nmax_message_size = 10\n", ":2: limits.max_message_size: 10 is out of range"},
		{"[limits]\nmessage_rate = -5\n", ":2: limits.message_rate: -5 is out of range"},
		{"[user_port]\nbind_port = 99999\n", ":2: user_port.bind_port: 99999 is not a TCP port"},
		{"trusted_proxies = [\"127.0.0.1\", \"proxy.example\"]\n", ":1: trusted_proxies: ParseAddr(\"proxy.example\")"},
		{"[tls]\ncert_file = \"/x.pem\"\n", ":1: tls.key_file: cert_file and key_file go together"},
		{"[tls]\ncert_file = \"/nonexistent.pem\"\nkey_file = \"/nonexistent.key\"\n", ":2: tls.cert_file: loading certificate"},
		{"[tls]\nmin_version = \"1.0\"\n", ":2: tls.min_version: \"1.0\": use \"1.2\" or \"1.3\""},
		{"[tls.acme]\nhost_names = [\"wsrc.example.org\"]\n", ":1: tls.acme.accept_terms: set accept_terms = true"},
		{"[tls.acme]\naccept_terms = true\nhost_names = [\n  \"ok.example.org\",\n  \"192.0.2.1\",\n]\n", ":5: tls.acme.host_names[1]: \"192.0.2.1\" is an IP address"},
		{"[tls.acme]\naccept_terms = true\nhost_names = [\"localhost\"]\n", "tls.acme.host_names[0]: \"localhost\" is not a fully qualified host name"},
		{"[tls.acme]\naccept_terms = true\nhost_names = [\"a.example\"]\ndirectory_url = \"http://ca.example/dir\"\n", ":4: tls.acme.directory_url: \"http://ca.example/dir\" is not an https:// URL"},
		{"[tls.acme]\naccept_terms = true\nhost_names = [\"a.example\"]\nhttp_listen = \"80\"\n", ":4: tls.acme.http_listen: \"80\" is not host:port"},
		{"[[user]]\nname = \"a\"\n", ":1: user[0]: user \"a\" has neither password_hash nor token_hashes"},
		{"[[user]]\nname = \"a\"\npassword_hash = \"secret\"\n", ":3: user[0].password_hash: not a bcrypt hash"},
		{"[[user]]\nname = \"a\"\npassword_hash = \"" + pw + "\"\n[[user]]\nname = \"a\"\ntoken_hashes = [\"sha256:00\"]\n", ":5: user[1].name: user \"a\" is defined twice"},
		{"[[user]]\nname = \"a\"\npassword_hash = \"" + pw + "\"\n[[user]]\nname = \"b\"\ntoken_hashes = [\"sha256:00\"]\n", ":6: user[1].token_hashes[0]: token hash has 2 hex digits"},
		{"[[user]]\nname = \"a\"\npassword_hash = \"" + pw + "\"\ncards = [\n  { agent = \"x\" },\n  { },\n]\n", ":6: user[0].cards[1]: rule has no pattern"},
		{"[[user]]\nname = \"a\"\npassword_hash = \"" + pw + "\"\nall_cards = true\ncards = [{ agent = \"x\" }]\n", ":4: user[0].all_cards: all_cards and cards exclude each other"},
		{"[[agent]]\nname = \"pi\"\n", ":1: agent[0].token_hashes: agent \"pi\" has no token"},
		{"[[agent]]\ntoken_hashes = [\"" + auth.HashToken("t").String() + "\"]\n", ":1: agent[0].name: every agent needs a name"},
		{"[[agent]]\nname = \"pi\"\ntoken_hashes = [\"" + auth.HashToken("t").String() + "\"]\ncards = [{ reader = \"x\\\\\" }]\n", ":4: agent[0].cards[0]: reader: pattern ends in a lone"},
		{"[[user]]\nname = \"u\"\ntoken_hashes = [\"" + auth.HashToken("t").String() + "\"]\n[[agent]]\nname = \"pi\"\ntoken_hashes = [\"" + auth.HashToken("t").String() + "\"]\n", "token also belongs to user \"u\""},
		{"[limits]\nmax_cards = \"many\"\n", ":2: limits.max_cards: incompatible types"},
		{"[user_prot]\nbind_port = 1\n", ":2: user_prot.bind_port: unknown setting"},
		{"[[user]]\nname = \"a\"\npasword_hash = \"x\"\n", ":3: user.pasword_hash: unknown setting"},
	}
	for _, tc := range cases {
		path := writeConfig(t, tc.text)
		_, err := resolveWith(t, path, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q:\n got %v\nwant %q", tc.text, err, tc.want)
		}
	}
	// Several mistakes: all of them, in line order.
	path := writeConfig(t, "log_level = \"loud\"\n[limits]\nmax_users = -1\nmax_cards = -1\n")
	_, err := resolveWith(t, path, nil)
	if err == nil || strings.Count(err.Error(), "\n") != 2 || !strings.Contains(err.Error(), ":1:") ||
		strings.Index(err.Error(), ":3:") > strings.Index(err.Error(), ":4:") {
		t.Fatalf("got %v", err)
	}
}

// docs/examples/server.toml is valid as shipped.
func TestExampleConfig(t *testing.T) {
	path := filepath.Join("..", "..", "docs", "examples", "server.toml")
	s, err := resolveWith(t, path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !s.store.HasUsers() || !s.store.HasAgents() {
		t.Fatal("the example should show users and agents")
	}
	var out bytes.Buffer
	lookupEnv = noEnv
	t.Cleanup(func() { lookupEnv = os.LookupEnv })
	if code := checkConfig([]string{"--config", path}, stdio{nil, &out, &out}); code != 0 || !strings.HasPrefix(out.String(), "OK: ") {
		t.Fatalf("check-config: %d %s", code, out.String())
	}
	// The commented-out [status] and [trace] settings are valid too.
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	section := ""
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "[") {
			section, _, _ = strings.Cut(line, " ")
		}
		if (section == "[status]" || section == "[trace]") && strings.HasPrefix(line, "# ") && strings.Contains(line, " = ") {
			line = strings.TrimPrefix(line, "# ")
		}
		b.WriteString(line + "\n")
	}
	s, err = resolveWith(t, writeConfig(t, b.String()), nil)
	if err != nil {
		t.Fatalf("example with [status] and [trace] set: %v", err)
	}
	if s.status.bind != defaultStatusBind || len(s.status.allowedHosts) != 1 || !s.trace.enabled() || s.trace.maxSize != 100<<20 || s.trace.keep != 4 {
		t.Fatalf("example settings: %+v %+v", s.status, s.trace)
	}
}

func TestCheckConfig(t *testing.T) {
	lookupEnv = noEnv
	t.Cleanup(func() { lookupEnv = os.LookupEnv })
	good := writeConfig(t, `
[user_port]
bind_host = "0.0.0.0"
[[user]]
name = "alice"
password_hash = "`+cheapHash(t, "pw")+`"
all_cards = true
`)
	var out, errOut bytes.Buffer
	if code := checkConfig([]string{"--config", good}, stdio{nil, &out, &errOut}); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	for _, want := range []string{"OK: " + good, "user port 0.0.0.0:4220, 1 user", "card port 127.0.0.1:4221, no authentication", "no TLS",
		"status listener 127.0.0.1:4223, loopback only"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	bad := writeConfig(t, "[limits]\nmax_users = 0.5\n")
	out.Reset()
	errOut.Reset()
	if code := checkConfig([]string{"--config", bad}, stdio{nil, &out, &errOut}); code != exitFailure {
		t.Fatalf("bad config: exit %d", code)
	}
	if !strings.Contains(errOut.String(), bad+":2: limits.max_users") || out.Len() != 0 {
		t.Fatalf("stdout %q stderr %q", out.String(), errOut.String())
	}
	// The default path may be missing.
	out.Reset()
	if code := checkConfig([]string{"--config", ""}, stdio{nil, &out, &errOut}); code != 0 || !strings.Contains(out.String(), "no configuration file") {
		t.Fatalf("no file: %d %s", code, out.String())
	}
}

func TestHashPasswordAndGenToken(t *testing.T) {
	// The real cost is auth's business (and slow under -race).
	hashPasswordWith = func(pw string) (string, error) { return cheapHash(t, pw), nil }
	t.Cleanup(func() { hashPasswordWith = auth.HashPassword })
	var out, errOut bytes.Buffer
	if code := hashPassword(nil, stdio{strings.NewReader("s3cret\n"), &out, &errOut}); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	h := strings.TrimSpace(out.String())
	if bcrypt.CompareHashAndPassword([]byte(h), []byte("s3cret")) != nil {
		t.Fatalf("hash %q does not verify", h)
	}
	if code := hashPassword(nil, stdio{strings.NewReader(""), io.Discard, io.Discard}); code == 0 {
		t.Fatal("empty input accepted")
	}
	if code := hashPassword([]string{"pw"}, discard); code != exitUsage {
		t.Fatal("a password argument accepted (it would end up in the shell history)")
	}
	out.Reset()
	if code := genToken(nil, stdio{nil, &out, &errOut}); code != 0 {
		t.Fatal(code)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || auth.HashToken(lines[0]).String() != lines[1] || !strings.HasPrefix(lines[0], auth.TokenPrefix) {
		t.Fatalf("gen-token printed %q", lines)
	}
	// Through run, as the subcommands are reached.
	out.Reset()
	if code := run(t.Context(), []string{"gen-token"}, stdio{nil, &out, io.Discard}, nil); code != 0 || !strings.HasPrefix(out.String(), "wsrc_") {
		t.Fatalf("run gen-token: %d %q", code, out.String())
	}
}
