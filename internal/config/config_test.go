package config

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type rule struct {
	Agent string `toml:"agent"`
	ICCID string `toml:"iccid"`
}

type user struct {
	Name  string `toml:"name"`
	Admin bool   `toml:"admin"`
	Cards []rule `toml:"cards"`
}

type sample struct {
	LogLevel string `toml:"log_level"`
	Listen   struct {
		Host string `toml:"host"`
		Port int    `toml:"port"`
	} `toml:"listen"`
	TLS struct {
		CertFile string `toml:"cert_file"`
		ACME     struct {
			Hosts []string `toml:"host_names"`
		} `toml:"acme"`
	} `toml:"tls"`
	Limits struct {
		Hello time.Duration `toml:"hello_timeout"`
	} `toml:"limits"`
	Users []user `toml:"user"`
}

const doc = `# sample
log_level = "debug"   # a comment

[listen]
host = "0.0.0.0"
port = 4221

[tls]
cert_file = """
/etc/wsrc/cert.pem"""

[tls.acme]
host_names = [
  "a.example",
  "b.example",
]

[limits]
hello_timeout = "5s"

[[user]]
name = "alice"
cards = [
  { agent = "pi-*" },
  { iccid = "8949*" },
]

[[user]]
name = 'bob'
admin = true
cards = [{ agent = "x" }, { iccid = "y" }]
`

func TestDecodeAndLines(t *testing.T) {
	var s sample
	f, err := Decode("server.toml", []byte(doc), &s)
	if err != nil {
		t.Fatal(err)
	}
	if s.Listen.Port != 4221 || s.Limits.Hello != 5*time.Second || len(s.Users) != 2 || s.Users[1].Cards[1].ICCID != "y" ||
		s.TLS.CertFile != "/etc/wsrc/cert.pem" || s.TLS.ACME.Hosts[1] != "b.example" {
		t.Fatalf("decoded %+v", s)
	}
	for key, want := range map[string]int{
		"log_level":                 2,
		"listen":                    4,
		"listen.port":               6,
		"tls.cert_file":             9,
		"tls.acme":                  12,
		"tls.acme.host_names[1]":    15,
		"limits.hello_timeout":      19,
		"user[0]":                   21,
		"user[0].name":              22,
		"user[0].cards[1]":          25,
		"user[0].cards[1].iccid":    25,
		"user[1].admin":             30,
		"user[1].cards[1].iccid":    31,
		"user[1].password_hash":     28, // not set: the table's line
		"user[7].name":              21, // no such element: the array's line
		"nothing.here":              0,
		"tls.acme.host_names[9]":    13,
		"user[0].cards[0].agent":    24,
		"user[1].cards":             31,
		"tls.acme.host_names":       13,
		"user[0].cards[1].iccid.x":  25,
		"listen.host":               5,
		"limits":                    18,
		"user":                      21,
		"user[1]":                   28,
		"user[1].name":              29,
		"tls":                       8,
		"tls.acme.host_names[0]":    14,
		"user[0].cards":             23,
		"user[0].cards[0]":          24,
		"user[1].cards[0]":          31,
		"user[1].cards[0].agent":    31,
		"user[0].admin":             21,
		"limits.nothing":            18,
		"tls.acme.nothing[3].x.y.z": 12,
	} {
		if got := f.Line(key); got != want {
			t.Errorf("Line(%q) = %d, want %d", key, got, want)
		}
	}
	e := f.Errorf("user[1].cards[1].iccid", "bad pattern %q", "y")
	if e.Error() != `server.toml:31: user[1].cards[1].iccid: bad pattern "y"` {
		t.Errorf("Errorf: %s", e)
	}
	if !f.IsDefined("tls.acme.host_names") || f.IsDefined("tls.key_file") {
		t.Error("IsDefined wrong")
	}
}

func TestUnknownKeys(t *testing.T) {
	var s sample
	_, err := Decode("s.toml", []byte("log_levle = 1\n[listen]\nhots = \"x\"\n[[user]]\nname = \"a\"\n[[user]]\nnmae = \"b\"\n[[user]]\nnmae = \"c\"\n"), &s)
	var es Errors
	if !errors.As(err, &es) {
		t.Fatalf("got %v", err)
	}
	want := []string{
		"s.toml:1: log_levle: unknown setting (misspelt?)",
		"s.toml:3: listen.hots: unknown setting (misspelt?)",
		"s.toml:7: user.nmae: unknown setting (misspelt?)",
		"s.toml:9: user.nmae: unknown setting (misspelt?)",
	}
	if err.Error() != strings.Join(want, "\n") {
		t.Errorf("got\n%s\nwant\n%s", err, strings.Join(want, "\n"))
	}
}

// Syntax and type errors carry the decoder's line and key.
func TestTypeErrorLine(t *testing.T) {
	for _, tc := range []struct{ doc, want string }{
		{"log_level = \"x\"\n[listen]\nport = \"4220\"\n", `s.toml:3: listen.port: incompatible types`},
		{"[limits]\n\nhello_timeout = \"5 parsecs\"\n", `s.toml:3: limits.hello_timeout: `},
		{"[listen]\nport = 4220\nport = 4221\n", `s.toml:3: `},
		{"[listen\n", `s.toml:2: `},
		{"log_level = \"unterminated\n", `s.toml:1: `},
		{"[[user]]\nname = \"a\"\nadmin = \"yes\"\n", `s.toml:3: user.admin: incompatible types`},
	} {
		var s sample
		_, err := Decode("s.toml", []byte(tc.doc), &s)
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want prefix %q", tc.doc, err, tc.want)
		}
	}
}

func TestLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.toml")
	if err := os.WriteFile(path, []byte("[listen]\nport = 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var s sample
	f, err := Load(path, &s)
	if err != nil || s.Listen.Port != 1 || f.Path != path {
		t.Fatal(f, err, s)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.toml"), &s); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

func TestKeyHelpers(t *testing.T) {
	for in, want := range map[string]string{"a.b[2].c": "a.b[2]", "a.b[2]": "a.b", "a": "", `a."x.y"`: "a", `"a.b"[1]`: `"a.b"`} {
		if got := parentKey(in); got != want {
			t.Errorf("parentKey(%q) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[string]string{"user[1].cards[0].x": "user.cards.x", `a."[x]"[2]`: `a."[x]"`, "plain": "plain"} {
		if got := stripIndexes(in); got != want {
			t.Errorf("stripIndexes(%q) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[string]string{"abc-1_2": "abc-1_2", "a b": `"a b"`, "": `""`, "a.b": `"a.b"`} {
		if got := quoteKey(in); got != want {
			t.Errorf("quoteKey(%q) = %q, want %q", in, got, want)
		}
	}
	// Quoted keys in the document are found under their quoted form.
	idx := buildIndex("[\"a b\".c]\n'd.e' = 1\nx = '''\n[not]\n'''\ny = 2\n")
	if idx.first[`"a b".c."d.e"`] != 2 || idx.first[`"a b".c.y`] != 6 || len(idx.first) != 4 {
		t.Errorf("index %v", idx.first)
	}
}

func TestFlagsFromEnv(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	host := fs.String("user-bind-host", "127.0.0.1", "")
	port := fs.Int("user-bind-port", 4220, "")
	level := fs.String("log-level", "info", "")
	if err := fs.Parse([]string{"--log-level", "debug"}); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"WSRC_SERVER_USER_BIND_HOST": "0.0.0.0", "WSRC_SERVER_LOG_LEVEL": "warn", "WSRC_SERVER_ARGS": "--x"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	if err := FlagsFromEnv(fs, "WSRC_SERVER_", lookup); err != nil {
		t.Fatal(err)
	}
	if *host != "0.0.0.0" || *port != 4220 || *level != "debug" {
		t.Fatalf("host %q port %d level %q", *host, *port, *level)
	}
	ex := Explicit(fs)
	if !ex["user-bind-host"] || !ex["log-level"] || ex["user-bind-port"] {
		t.Fatalf("explicit %v", ex)
	}
	env["WSRC_SERVER_USER_BIND_PORT"] = "many"
	err := FlagsFromEnv(fs, "WSRC_SERVER_", lookup)
	if err == nil || !strings.Contains(err.Error(), "WSRC_SERVER_USER_BIND_PORT") {
		t.Fatalf("bad value: %v", err)
	}
}

func FuzzIndex(f *testing.F) {
	f.Add(doc)
	for _, s := range []string{"[a", "a = [", "a = {", "x = '''", `x = """a\`, "[[a]]\n[[a.b]]\n[a.b.c]", "a = [[1,2],[3]]", "a.b.c = {d.e = 1}"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, src string) {
		idx := buildIndex(src)
		lines := strings.Count(src, "\n") + 1
		for k, l := range idx.first {
			if l < 1 || l > lines {
				t.Fatalf("key %q on line %d of %d", k, l, lines)
			}
		}
		var s sample
		_, _ = Decode("f.toml", []byte(src), &s)
	})
}
