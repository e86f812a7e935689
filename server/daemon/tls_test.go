package daemon

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/crypto/acme/autocert"
)

// discardLog swallows net/http's log lines.
var discardLog = log.New(io.Discard, "", 0)

// testCA is a certificate authority for tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
	pool *x509.CertPool
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "wsrc test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(90 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pool: pool}
}

// issue makes a leaf for names (DNS names or IPs) valid for validFor;
// it returns the chain and key in PEM.
func (ca *testCA) issue(t *testing.T, cn string, validFor time.Duration, names ...string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(validFor),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

// writeCert writes a leaf for localhost and 127.0.0.1 to dir.
func (ca *testCA) writeCert(t *testing.T, dir, cn string) (certFile, keyFile string) {
	t.Helper()
	c, k := ca.issue(t, cn, 30*24*time.Hour, "localhost", "127.0.0.1")
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	for f, b := range map[string][]byte{certFile: c, keyFile: k} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return certFile, keyFile
}

// dialWSS opens a WebSocket over TLS and returns it with the CN of the
// server's certificate.
func dialWSS(t *testing.T, addr string, pool *x509.CertPool, header http.Header) (*websocket.Conn, string) {
	t.Helper()
	d := websocket.Dialer{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}, HandshakeTimeout: 10 * time.Second}
	c, resp, err := d.Dial("wss://"+addr+"/", header)
	if err != nil {
		status := ""
		if resp != nil {
			status = resp.Status
		}
		t.Fatalf("dialing wss://%s: %v %s", addr, err, status)
	}
	cn := c.UnderlyingConn().(*tls.Conn).ConnectionState().PeerCertificates[0].Subject.CommonName
	return c, cn
}

func roundTrip(t *testing.T, c *websocket.Conn, send, want string) {
	t.Helper()
	if err := c.WriteMessage(websocket.TextMessage, []byte(send)); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, got, err := c.ReadMessage()
	if err != nil || !strings.Contains(string(got), want) {
		t.Fatalf("sent %s, got %s %v; want %s", send, got, err, want)
	}
}

// Both ports speak TLS; SIGHUP swaps the certificate for new connections
// while open ones go on; a broken file on reload keeps the old one.
func TestTLSReloadOnSIGHUP(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	certFile, keyFile := ca.writeCert(t, dir, "first")
	s, o, ex := testSettings(t, "", "--tls-cert", certFile, "--tls-key", keyFile)
	r := start(t, s, o, ex)

	u1, cn := dialWSS(t, r.user, ca.pool, nil)
	defer u1.Close()
	if cn != "first" {
		t.Fatalf("certificate %q", cn)
	}
	roundTrip(t, u1, `{"msg_type":"hello","client_type":"user"}`, "hello_ack")
	c1, _ := dialWSS(t, r.card, ca.pool, nil)
	defer c1.Close()
	roundTrip(t, c1, `{"msg_type":"hello","client_type":"card","atr":"3b00"}`, "hello_ack")

	ca.writeCert(t, dir, "second")
	r.hup <- syscall.SIGHUP
	waitLog(t, r, `CN=second`)
	u2, cn := dialWSS(t, r.user, ca.pool, nil)
	defer u2.Close()
	if cn != "second" {
		t.Fatalf("after SIGHUP: certificate %q", cn)
	}
	roundTrip(t, u1, `{"msg_type":"list_cards"}`, "list_cards_ack") // the old connection lives on

	if err := os.WriteFile(certFile, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	r.hup <- syscall.SIGHUP
	waitLog(t, r, "TLS certificate not reloaded")
	u3, cn := dialWSS(t, r.user, ca.pool, nil)
	u3.Close()
	if cn != "second" {
		t.Fatalf("after a failed reload: %q", cn)
	}
}

// waitLog waits until the server's log contains want.
func waitLog(t *testing.T, r *running, want string) {
	t.Helper()
	r.log.waitFor(t, want, 1)
}

// TLS 1.2 at least, HTTP/1.1 only.
func TestTLSPolicy(t *testing.T) {
	ca := newTestCA(t)
	certFile, keyFile := ca.writeCert(t, t.TempDir(), "policy")
	s, o, ex := testSettings(t, "", "--tls-cert", certFile, "--tls-key", keyFile)
	r := start(t, s, o, ex)
	for _, v := range []uint16{tls.VersionTLS10, tls.VersionTLS11} {
		c, err := tls.Dial("tcp", r.user, &tls.Config{RootCAs: ca.pool, ServerName: "localhost", MinVersion: v, MaxVersion: v})
		if err == nil {
			c.Close()
			t.Errorf("TLS version %x accepted", v)
		}
	}
	// TLS 1.2 without AEAD: refused.
	cbc, err := tls.Dial("tcp", r.user, &tls.Config{RootCAs: ca.pool, ServerName: "localhost", MaxVersion: tls.VersionTLS12,
		CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA}})
	if err == nil {
		cbc.Close()
		t.Error("a CBC cipher suite was accepted")
	}
	tls12, err := tls.Dial("tcp", r.user, &tls.Config{RootCAs: ca.pool, ServerName: "localhost", MaxVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatalf("TLS 1.2 with AEAD: %v", err)
	}
	tls12.Close()
	c, err := tls.Dial("tcp", r.card, &tls.Config{RootCAs: ca.pool, ServerName: "localhost", NextProtos: []string{"h2", "http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if p := c.ConnectionState().NegotiatedProtocol; p != "http/1.1" {
		t.Fatalf("ALPN %q, want http/1.1", p)
	}
	// Plain WebSocket on a TLS port fails (no downgrade).
	if _, _, err := websocket.DefaultDialer.Dial("ws://"+r.user+"/", nil); err == nil {
		t.Fatal("plain ws:// accepted on a TLS port")
	}
}

// ACME, as far as it goes without a CA: the configuration, the manager,
// a certificate served from its cache for the configured host name only,
// and the HTTP-01 handler. Getting a certificate from a real CA is not
// tested (no network here).
func TestACMEOffline(t *testing.T) {
	cache := t.TempDir()
	path := writeConfig(t, `
[tls.acme]
host_names = ["wsrc.example.org"]
email = "ops@example.org"
accept_terms = true
cache_dir = "`+cache+`"
http_listen = "127.0.0.1:0"
directory_url = "https://acme.invalid/directory"
`)
	s, err := resolveWith(t, path, nil)
	if err != nil {
		t.Fatal(err)
	}
	a := s.tls.acme
	if a == nil || a.hostNames[0] != "wsrc.example.org" || a.cacheDir != cache || a.httpListen != "127.0.0.1:0" {
		t.Fatalf("acme settings %+v", a)
	}
	m := newACMEManager(a)
	if m.Client == nil || m.Client.DirectoryURL != "https://acme.invalid/directory" || m.Email != "ops@example.org" {
		t.Fatalf("manager %+v", m)
	}
	// A certificate in the cache, as autocert stores it: key, then chain.
	ca := newTestCA(t)
	certPEM, keyPEM := ca.issue(t, "wsrc.example.org", 60*24*time.Hour, "wsrc.example.org")
	ecKey, _ := pem.Decode(keyPEM)
	if err := os.WriteFile(filepath.Join(cache, "wsrc.example.org"), append(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecKey.Bytes}), certPEM...), 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tlsLn := tls.NewListener(ln, acmeTLSConfig(m, tlsVersion12))
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }), ErrorLog: discardLog}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(tlsLn) }()
	defer func() { srv.Close(); <-done }()

	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: ca.pool, ServerName: "wsrc.example.org"})
	if err != nil {
		t.Fatalf("handshake for the configured name: %v", err)
	}
	if cn := c.ConnectionState().PeerCertificates[0].Subject.CommonName; cn != "wsrc.example.org" {
		t.Errorf("certificate %q", cn)
	}
	c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d := tls.Dialer{Config: &tls.Config{RootCAs: ca.pool, ServerName: "other.example.org"}}
	if c, err := d.DialContext(ctx, "tcp", ln.Addr().String()); err == nil {
		c.Close()
		t.Fatal("handshake for a name not configured succeeded")
	}
	// HTTP-01: challenges go to autocert (an unknown token: 404 from it),
	// anything else gets our 404.
	h := acmeHTTPHandler(m)
	for path, want := range map[string]string{"/.well-known/acme-challenge/nosuchtoken": "", "/": "ACME HTTP-01 challenges only"} {
		req := httptest.NewRequest("GET", "http://wsrc.example.org"+path, nil)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusNotFound || !strings.Contains(w.Body.String(), want) {
			t.Errorf("%s: %d %q", path, w.Code, w.Body.String())
		}
	}
	var _ autocert.Cache = autocert.DirCache(cache)
}

// The ACME configuration with the whole program: the HTTP-01 listener is
// opened and the ports speak TLS with the cached certificate.
func TestACMEServe(t *testing.T) {
	cache := t.TempDir()
	ca := newTestCA(t)
	certPEM, keyPEM := ca.issue(t, "wsrc.example.org", 60*24*time.Hour, "wsrc.example.org")
	if err := os.WriteFile(filepath.Join(cache, "wsrc.example.org"), append(keyPEM, certPEM...), 0o600); err != nil {
		t.Fatal(err)
	}
	path := writeConfig(t, "[tls.acme]\nhost_names = [\"wsrc.example.org\"]\naccept_terms = true\ncache_dir = \""+cache+"\"\nhttp_listen = \"127.0.0.1:0\"\n")
	s, o, ex := testSettings(t, path)
	r := start(t, s, o, ex)
	waitLog(t, r, "port=acme-http")
	d := websocket.Dialer{TLSClientConfig: &tls.Config{RootCAs: ca.pool, ServerName: "wsrc.example.org"}}
	c, _, err := d.Dial("wss://"+r.user+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	roundTrip(t, c, `{"msg_type":"hello","client_type":"user"}`, "hello_ack")
}

// A client that opens a connection and then sends nothing (no TLS
// handshake, no request) is dropped after header_timeout.
func TestHandshakeTimeout(t *testing.T) {
	ca := newTestCA(t)
	certFile, keyFile := ca.writeCert(t, t.TempDir(), "slow")
	path := writeConfig(t, "[limits]\nheader_timeout = \"1s\"\n")
	s, o, ex := testSettings(t, path, "--tls-cert", certFile, "--tls-key", keyFile)
	r := start(t, s, o, ex)
	var conns []net.Conn
	for _, addr := range []string{r.user, r.card} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	start := time.Now()
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := c.Read(make([]byte, 1))
		if d := time.Since(start); err == nil || d > 5*time.Second {
			t.Errorf("%s: silent client kept for %v (%v), want about 1s", c.RemoteAddr(), d, err)
		}
	}
}

// Every state before the upgrade is bounded by header_timeout: a
// connection kept alive after a request that was not an upgrade (400,
// or 401 with accounts), and a request whose body is dribbled slowly.
// Issue 10, point 2.
func TestPreUpgradeStatesTimeOut(t *testing.T) {
	path := writeConfig(t, "[limits]\nheader_timeout = \"1s\"\n")
	s, o, ex := testSettings(t, path)
	r := start(t, s, o, ex)
	requests := map[string]string{
		"not an upgrade, kept alive": "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"slow body":                  "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab",
	}
	for name, req := range requests {
		for _, addr := range []string{r.user, r.card} {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := io.WriteString(c, req); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err = io.ReadAll(c) // the answer, if any, then EOF when the server closes
			if d := time.Since(start); err != nil || d > 5*time.Second {
				t.Errorf("%s on %s: connection kept for %v (%v), want closed after about 1s", name, addr, d, err)
			}
		}
	}
}
