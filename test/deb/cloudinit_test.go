package deb

import (
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

// userData is deploy/cloud-init/user-data.yaml.
var userData = filepath.Join(repoRoot, "deploy", "cloud-init", "user-data.yaml")

// cloudConfig is the part of cloud-init's schema the user data uses; any
// other top-level key fails the test (a typo would be ignored by
// cloud-init at boot).
type cloudConfig struct {
	PackageUpdate bool     `json:"package_update"`
	Packages      []string `json:"packages"`
	WriteFiles    []struct {
		Path        string `json:"path"`
		Owner       string `json:"owner"`
		Permissions string `json:"permissions"`
		Content     string `json:"content"`
	} `json:"write_files"`
	Runcmd [][]string `json:"runcmd"`
}

// TestCloudInit checks the cloud-init example: valid YAML (python3-yaml)
// with known keys, cloud-init's own schema check where cloud-init is
// installed, the server configuration it writes accepted by
// `wsrc-server check-config` once its CHANGE placeholders hold real
// hashes, and its scripts clean under shellcheck. It needs no package.
func TestCloudInit(t *testing.T) {
	raw, err := os.ReadFile(userData)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(raw), "#cloud-config\n") {
		t.Fatal("user data does not start with #cloud-config")
	}
	need(t, "python3", "python3")
	js, err := exec.Command("python3", "-c",
		"import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)", userData).Output()
	if err != nil {
		skipOrFail(t, "python3 cannot read YAML (Debian package python3-yaml): "+err.Error())
	}
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(js, &keys); err != nil {
		t.Fatal(err)
	}
	for k := range keys {
		if !slices.Contains([]string{"package_update", "packages", "write_files", "runcmd"}, k) {
			t.Errorf("unexpected top-level key %q", k)
		}
	}
	var cc cloudConfig
	if err := json.Unmarshal(js, &cc); err != nil {
		t.Fatalf("user data: %v", err)
	}
	if ci, err := exec.LookPath("cloud-init"); err == nil {
		mustRun(t, nil, ci, "schema", "--config-file", userData)
	} else {
		t.Log("cloud-init not installed: its schema check is skipped")
	}

	files := map[string]string{}
	for _, f := range cc.WriteFiles {
		files[f.Path] = f.Content
		if f.Owner != "root:root" || !regexp.MustCompile(`^"?0[0-7]{3}"?$`).MatchString(f.Permissions) {
			t.Errorf("%s: owner %q permissions %q", f.Path, f.Owner, f.Permissions)
		}
	}
	install, hook, config := files["/root/wsrc/install.sh"], files["/usr/local/sbin/wsrc-cert-deploy"], files["/root/wsrc/server.toml"]
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
	for name, text := range map[string]string{"install.sh": install, "wsrc-cert-deploy": hook} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o755); err != nil {
			t.Fatal(err)
		}
		mustRun(t, nil, "sh", "-n", p)
		if _, err := exec.LookPath("shellcheck"); err == nil {
			mustRun(t, nil, "shellcheck", "--shell=sh", p)
		}
	}

	checkCloudConfig(t, dir, config)
}

// checkCloudConfig fills the CHANGE placeholders of the user data's
// server.toml with real hashes and the TLS paths with a throw-away
// certificate, and runs `wsrc-server check-config` on it.
func checkCloudConfig(t *testing.T, dir, config string) {
	t.Helper()
	server := filepath.Join(dir, "wsrc-server")
	cmd := exec.Command("go", "build", "-o", server, "./cmd/wsrc-server")
	cmd.Dir = repoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/wsrc-server: %v\n%s", err, out)
	}
	cmd = exec.Command(server, "hash-password")
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
	filled := config
	for old, repl := range map[string]string{
		`"CHANGE: the line wsrc-server hash-password prints"`: `'` + password + `'`,
		`"CHANGE: line 2 of wsrc-server gen-token"`:           `"` + token + `"`,
		"/etc/wsrc/tls/fullchain.pem":                         cert,
		"/etc/wsrc/tls/privkey.pem":                           key,
	} {
		if !strings.Contains(filled, old) {
			t.Fatalf("server.toml in the user data lacks %s", old)
		}
		filled = strings.ReplaceAll(filled, old, repl)
	}
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
