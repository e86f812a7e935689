package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wsrc-go/wsrc/agent/agenttest"
)

// testCA is a certificate authority made up for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string // PEM of cert
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ca := &testCA{cert: cert, key: key, file: filepath.Join(t.TempDir(), name+".pem")}
	writePEM(t, ca.file, "CERTIFICATE", der)
	return ca
}

func writePEM(t *testing.T, file, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// issued is a certificate a testCA signed, with its key, in memory and
// as PEM files.
type issued struct {
	tls      tls.Certificate
	certFile string
	keyFile  string
}

// issue signs a certificate for cn: a server certificate for 127.0.0.1
// (and hosts), or a client certificate. ca nil makes it self-signed.
func (ca *testCA) issue(t *testing.T, cn string, client bool, hosts ...string) issued {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if client {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	} else if len(hosts) == 0 {
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	} else {
		tmpl.DNSNames = hosts
	}
	parent, signer := tmpl, key
	if ca != nil {
		parent, signer = ca.cert, ca.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	out := issued{tls: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
		certFile: filepath.Join(dir, cn+".crt"), keyFile: filepath.Join(dir, cn+".key")}
	writePEM(t, out.certFile, "CERTIFICATE", der)
	writePEM(t, out.keyFile, "PRIVATE KEY", keyDER)
	return out
}

// tlsServer is a wss:// agenttest server presenting cert.
func tlsServer(t *testing.T, cert issued, mutate ...func(*tls.Config)) *agenttest.Server {
	cfg := &tls.Config{Certificates: []tls.Certificate{cert.tls}}
	for _, m := range mutate {
		m(cfg)
	}
	return agenttest.NewServerWith(t, agenttest.Options{TLS: cfg})
}

// dialWith makes one connection attempt with opts, as a Session does.
func dialWith(t *testing.T, srv *agenttest.Server, opts TLSOptions) error {
	t.Helper()
	cfg, err := opts.Config()
	if err != nil {
		t.Fatalf("TLSOptions.Config: %v", err)
	}
	s := NewSession(Config{Server: srv.URL(), Logger: testLogger(), TLS: cfg}, newFakeCard(), "r")
	ws, err := s.dial(context.Background())
	if err == nil {
		ws.Close()
	}
	return err
}

// serveWith runs a Session with opts against srv until the server has
// accepted it, and returns the server's end of the connection.
func serveWith(t *testing.T, srv *agenttest.Server, opts TLSOptions) *agenttest.Conn {
	t.Helper()
	cfg, err := opts.Config()
	if err != nil {
		t.Fatal(err)
	}
	s := NewSession(Config{Server: srv.URL(), Logger: testLogger(), Timing: fastTiming, TLS: cfg}, newFakeCard(), "r")
	start(t, s.Run)
	conn := srv.Accept()
	conn.Hello()
	return conn
}

func TestTLSVerifiesServer(t *testing.T) {
	ca := newTestCA(t, "test-ca")
	other := newTestCA(t, "other-ca")
	srv := tlsServer(t, ca.issue(t, "server", false))

	conn := serveWith(t, srv, TLSOptions{CAFile: ca.file})
	if conn.TLS() == nil {
		t.Fatal("connection is not TLS")
	}

	for name, opts := range map[string]TLSOptions{
		"wrong CA":     {CAFile: other.file},
		"system roots": {},
	} {
		err := dialWith(t, srv, opts)
		var unknown x509.UnknownAuthorityError
		if !errors.As(err, &unknown) || !strings.Contains(err.Error(), "server certificate not trusted") ||
			!strings.Contains(err.Error(), "ca_file") {
			t.Errorf("%s: dial = %v, want a clear unknown-authority error", name, err)
		}
	}

	wrongName := tlsServer(t, ca.issue(t, "elsewhere", false, "elsewhere.example"))
	err := dialWith(t, wrongName, TLSOptions{CAFile: ca.file})
	if !strings.Contains(fmt.Sprint(err), "not valid for the host in the server URL") {
		t.Errorf("wrong name: dial = %v", err)
	}
}

func TestTLSPin(t *testing.T) {
	self := (*testCA)(nil).issue(t, "self-signed", false)
	pin := Fingerprint(self.tls.Certificate[0])
	srv := tlsServer(t, self)

	// A pin alone trusts exactly that certificate, self-signed or not;
	// colons, case and a "sha256:" prefix do not matter.
	lower := "sha256:" + strings.ToLower(strings.ReplaceAll(pin, ":", ""))
	serveWith(t, srv, TLSOptions{PinSHA256: []string{"00" + strings.Repeat(":00", 31), lower}})

	other := (*testCA)(nil).issue(t, "other", false)
	err := dialWith(t, srv, TLSOptions{PinSHA256: []string{Fingerprint(other.tls.Certificate[0])}})
	var pe *PinError
	if !errors.Is(err, ErrPinMismatch) || !errors.As(err, &pe) || pe.Got != pin {
		t.Fatalf("pin mismatch: dial = %v, want ErrPinMismatch naming %s", err, pin)
	}

	// With a CA file, the chain is verified too.
	ca := newTestCA(t, "pin-ca")
	signed := ca.issue(t, "signed", false)
	srv2 := tlsServer(t, signed)
	pin2 := Fingerprint(signed.tls.Certificate[0])
	if err := dialWith(t, srv2, TLSOptions{CAFile: ca.file, PinSHA256: []string{pin2}}); err != nil {
		t.Errorf("CA and matching pin: %v", err)
	}
	if err := dialWith(t, srv2, TLSOptions{CAFile: newTestCA(t, "x").file, PinSHA256: []string{pin2}}); err == nil {
		t.Error("a matching pin let a certificate from an untrusted CA through although ca_file is set")
	}
	if err := dialWith(t, srv2, TLSOptions{CAFile: ca.file, PinSHA256: []string{pin}}); !errors.Is(err, ErrPinMismatch) {
		t.Errorf("CA and wrong pin: %v", err)
	}
}

func TestTLSClientCertificate(t *testing.T) {
	ca := newTestCA(t, "ca")
	client := ca.issue(t, "agent-7", true)
	requireClient := func(c *tls.Config) {
		c.ClientAuth = tls.RequireAndVerifyClientCert
		c.ClientCAs = x509.NewCertPool()
		c.ClientCAs.AddCert(ca.cert)
	}
	srv := tlsServer(t, ca.issue(t, "server", false), requireClient)

	conn := serveWith(t, srv, TLSOptions{CAFile: ca.file, CertFile: client.certFile, KeyFile: client.keyFile})
	if certs := conn.TLS().PeerCertificates; len(certs) == 0 || certs[0].Subject.CommonName != "agent-7" {
		t.Fatalf("server saw client certificates %v", certs)
	}
	if err := dialWith(t, srv, TLSOptions{CAFile: ca.file}); err == nil {
		t.Error("a server requiring a client certificate accepted none")
	}
}

func TestTLSOptionsErrors(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	ca := newTestCA(t, "ca")
	c := ca.issue(t, "c", true)
	for _, tc := range []struct {
		opts TLSOptions
		want string
	}{
		{TLSOptions{CAFile: filepath.Join(dir, "missing.pem")}, "reading CA file: open " + dir},
		{TLSOptions{CAFile: notPEM}, "no PEM certificate in it"},
		{TLSOptions{CertFile: c.certFile}, "needs both a certificate file and a key file"},
		{TLSOptions{KeyFile: c.keyFile}, "needs both"},
		{TLSOptions{CertFile: c.certFile, KeyFile: notPEM}, "loading client certificate " + c.certFile},
		{TLSOptions{CertFile: c.keyFile, KeyFile: c.keyFile}, "loading client certificate"},
		{TLSOptions{PinSHA256: []string{"abcd"}}, `pin "abcd": want a SHA-256 fingerprint`},
	} {
		if _, err := tc.opts.Config(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.opts, err, tc.want)
		}
	}
	if !(TLSOptions{}).IsZero() || (TLSOptions{CAFile: "x"}).IsZero() {
		t.Error("IsZero")
	}
}

var pinSeeds = []string{
	"AB:CD:" + strings.Repeat("00:", 29) + "EF",
	strings.Repeat("ab", 32),
	"sha256:" + strings.Repeat("0", 64),
	"SHA256=" + strings.Repeat("F", 64),
	"", "zz", strings.Repeat("0", 63), strings.Repeat("0", 66),
}

func TestParsePin(t *testing.T) {
	for i, s := range pinSeeds {
		_, err := ParsePin(s)
		if ok := i < 4; (err == nil) != ok {
			t.Errorf("ParsePin(%q) = %v, want ok %v", s, err, ok)
		}
	}
	der := []byte("certificate")
	fp := Fingerprint(der)
	p, err := ParsePin(fp)
	if err != nil || Fingerprint(der) != fp || len(fp) != 95 {
		t.Fatalf("Fingerprint %q round trip: %v", fp, err)
	}
	if p != sha256.Sum256(der) {
		t.Error("ParsePin(Fingerprint(x)) is not the hash of x")
	}
}

func FuzzParsePin(f *testing.F) {
	for _, s := range pinSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePin(s)
		if err != nil {
			return
		}
		// What parses is 32 bytes that parse back from their hex alike.
		q, err := ParsePin(hex.EncodeToString(p[:]))
		if err != nil || q != p {
			t.Fatalf("%q parsed to %x, which parses back to %x, %v", s, p, q, err)
		}
	})
}
