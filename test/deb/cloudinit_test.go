package deb

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"maps"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// serverUserData is the example for the relay on a VPS.
var serverUserData = filepath.Join(repoRoot, "deploy", "cloud-init", "server-user-data.yaml")

// cloudConfig is the part of cloud-init's schema the examples use. It is
// decoded strictly: any other key, at any level, fails the test (a typo
// would be ignored by cloud-init at boot).
type cloudConfig struct {
	Hostname       string      `json:"hostname"`
	ManageEtcHosts bool        `json:"manage_etc_hosts"`
	Users          []cloudUser `json:"users"`
	SSHPwauth      *bool       `json:"ssh_pwauth"`
	PackageUpdate  bool        `json:"package_update"`
	Packages       []string    `json:"packages"`
	WriteFiles     []writeFile `json:"write_files"`
	Runcmd         [][]string  `json:"runcmd"`
}

// cloudUser is an entry of users (cc_users_groups).
type cloudUser struct {
	Name              string   `json:"name"`
	Groups            []string `json:"groups"`
	Shell             string   `json:"shell"`
	Sudo              string   `json:"sudo"`
	LockPasswd        *bool    `json:"lock_passwd"`
	SSHAuthorizedKeys []string `json:"ssh_authorized_keys"`
}

// writeFile is an entry of write_files.
type writeFile struct {
	Path        string `json:"path"`
	Owner       string `json:"owner"`
	Permissions string `json:"permissions"`
	Content     string `json:"content"`
}

// loadCloudConfig reads a user data file: #cloud-config, valid YAML
// (python3-yaml) of the keys cloudConfig knows, and cloud-init's own
// schema check where cloud-init is installed.
func loadCloudConfig(t *testing.T, path string) cloudConfig {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(raw), "#cloud-config\n") {
		t.Fatalf("%s does not start with #cloud-config", path)
	}
	need(t, "python3", "python3")
	js, err := exec.Command("python3", "-c",
		"import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)", path).Output()
	if err != nil {
		skipOrFail(t, "python3 cannot read YAML (Debian package python3-yaml): "+err.Error())
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	var cc cloudConfig
	if err := dec.Decode(&cc); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if ci, err := exec.LookPath("cloud-init"); err == nil {
		mustRun(t, nil, ci, "schema", "--config-file", path)
	} else {
		t.Log("cloud-init not installed: its schema check is skipped")
	}
	return cc
}

// writtenFiles returns the write_files entries by path, and fails the
// test for one not owned by root:root or without an octal mode.
func writtenFiles(t *testing.T, cc cloudConfig) map[string]writeFile {
	t.Helper()
	files := map[string]writeFile{}
	for _, f := range cc.WriteFiles {
		files[f.Path] = f
		if f.Owner != "root:root" || !regexp.MustCompile(`^0[0-7]{3}$`).MatchString(f.Permissions) {
			t.Errorf("%s: owner %q permissions %q", f.Path, f.Owner, f.Permissions)
		}
	}
	return files
}

// checkScripts writes each script (name → text) into dir and checks it
// with sh -n and, where installed, shellcheck.
func checkScripts(t *testing.T, dir string, scripts map[string]string) {
	t.Helper()
	for name, text := range scripts {
		if text == "" {
			t.Errorf("script %s is empty", name)
			continue
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o755); err != nil {
			t.Fatal(err)
		}
		mustRun(t, nil, "sh", "-n", p)
		if _, err := exec.LookPath("shellcheck"); err == nil {
			mustRun(t, nil, "shellcheck", "--shell=sh", p)
		}
	}
}

// fillPlaceholders replaces each placeholder (old → new) in text, and
// fails the test when one is not there.
func fillPlaceholders(t *testing.T, what, text string, repl map[string]string) string {
	t.Helper()
	for old, with := range repl {
		if !strings.Contains(text, old) {
			t.Fatalf("%s lacks %s", what, old)
		}
		text = strings.ReplaceAll(text, old, with)
	}
	return text
}

// buildCommand builds ./cmd/<name> of this repository into dir and returns
// the binary's path.
func buildCommand(t *testing.T, dir, name string) string {
	t.Helper()
	bin := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/"+name)
	cmd.Dir = repoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/%s: %v\n%s", name, err, out)
	}
	return bin
}

// TestCloudInitServer checks the relay's cloud-init example: valid YAML
// with known keys, cloud-init's own schema check where cloud-init is
// installed, the server configuration it writes accepted by
// `wsrc-server check-config` once its CHANGE placeholders hold real
// hashes, and its scripts clean under shellcheck. It needs no package.
func TestCloudInitServer(t *testing.T) {
	cc := loadCloudConfig(t, serverUserData)
	files := writtenFiles(t, cc)
	install, hook, config := files["/root/wsrc/install.sh"].Content, files["/usr/local/sbin/wsrc-cert-deploy"].Content, files["/root/wsrc/server.toml"].Content
	if install == "" || hook == "" || config == "" {
		t.Fatalf("write_files lacks install.sh, the deploy hook or server.toml: %q", slices.Sorted(maps.Keys(files)))
	}
	if !slices.EqualFunc(cc.Runcmd, [][]string{{"/root/wsrc/install.sh"}}, slices.Equal[[]string]) {
		t.Errorf("runcmd %q, want [[/root/wsrc/install.sh]]", cc.Runcmd)
	}
	for _, want := range []string{"cd /root/wsrc", "install -m 0640 -o root -g wsrc server.toml /etc/wsrc/server.toml",
		"--deploy-hook /usr/local/sbin/wsrc-cert-deploy", "wsrc-server check-config"} {
		if !strings.Contains(install, want) {
			t.Errorf("install.sh lacks %q", want)
		}
	}
	if !slices.Contains(cc.Packages, "certbot") || !slices.Contains(cc.Packages, "curl") {
		t.Errorf("packages %q lack certbot or curl", cc.Packages)
	}

	dir := t.TempDir()
	checkScripts(t, dir, map[string]string{"install.sh": install, "wsrc-cert-deploy": hook})
	checkCloudConfig(t, dir, config)
}

// checkCloudConfig fills the CHANGE placeholders of the user data's
// server.toml with real hashes and the TLS paths with a throw-away
// certificate, and runs `wsrc-server check-config` on it.
func checkCloudConfig(t *testing.T, dir, config string) {
	t.Helper()
	server := buildCommand(t, dir, "wsrc-server")
	cmd := exec.Command(server, "hash-password")
	cmd.Stdin = strings.NewReader("correct horse\n")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("wsrc-server hash-password: %v", err)
	}
	password := strings.Fields(string(out))[0]
	out, err = exec.Command(server, "gen-token").Output()
	if err != nil || len(strings.Fields(string(out))) != 2 {
		t.Fatalf("wsrc-server gen-token: %v: %q", err, out)
	}
	token := strings.Fields(string(out))[1]

	cert, key := selfSigned(t, dir)
	filled := fillPlaceholders(t, "server.toml in the user data", config, map[string]string{
		`"CHANGE: the line wsrc-server hash-password prints"`: `'` + password + `'`,
		`"CHANGE: line 2 of wsrc-server gen-token"`:           `"` + token + `"`,
		"/etc/wsrc/tls/fullchain.pem":                         cert,
		"/etc/wsrc/tls/privkey.pem":                           key,
	})
	path := filepath.Join(dir, "server.toml")
	if err := os.WriteFile(path, []byte(filled), 0o600); err != nil {
		t.Fatal(err)
	}
	got := mustRun(t, nil, server, "check-config", "--config", path)
	for _, want := range []string{"OK", "1 user", "1 agent", "TLS from " + cert} {
		if !strings.Contains(got, want) {
			t.Errorf("check-config of the user data's server.toml:\n%s\nwant %q", got, want)
		}
	}
}

// selfSigned writes a throw-away certificate and key (PEM) into dir.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "relay.example.org"},
		DNSNames:     []string{"relay.example.org"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "fullchain.pem"), filepath.Join(dir, "privkey.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}
