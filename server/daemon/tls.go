package daemon

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"
)

// TLS: both ports serve the same certificate, from files (reloaded on
// SIGHUP: new handshakes get the new certificate, open connections carry
// on) or from an ACME CA (golang.org/x/crypto/acme/autocert, which
// renews by itself). TLS 1.2 at least; for TLS 1.2 only ECDHE with AEAD
// ciphers (Mozilla's "intermediate" list: no RSA key exchange, no CBC);
// TLS 1.3 and the key exchange groups as Go chooses them (X25519 with
// hybrid post-quantum ML-KEM first). HTTP/1.1 only: a WebSocket upgrade
// is an HTTP/1.1 request.

const (
	tlsVersion12 = tls.VersionTLS12
	tlsVersion13 = tls.VersionTLS13
)

// loadKeyPair reads and checks a certificate chain and its key.
func loadKeyPair(certFile, keyFile string) (*tls.Certificate, error) {
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("loading certificate %s and key %s: %w", certFile, keyFile, err)
	}
	if c.Leaf == nil {
		if c.Leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return nil, fmt.Errorf("parsing certificate %s: %w", certFile, err)
		}
	}
	return &c, nil
}

// certReloader serves a certificate from files and swaps it atomically
// when Reload succeeds; a failed Reload keeps the old one.
type certReloader struct {
	log *slog.Logger
	cur atomic.Pointer[tls.Certificate]

	mu                sync.Mutex // serialises Reload; guards the file names
	certFile, keyFile string
}

func newCertReloader(certFile, keyFile string, log *slog.Logger) (*certReloader, error) {
	r := &certReloader{log: log, certFile: certFile, keyFile: keyFile}
	if err := r.Reload(); err != nil {
		return nil, err
	}
	return r, nil
}

// SetFiles changes the files the next Reload reads.
func (r *certReloader) SetFiles(certFile, keyFile string) {
	r.mu.Lock()
	r.certFile, r.keyFile = certFile, keyFile
	r.mu.Unlock()
}

// Reload reads the files again. Connections already open keep the
// certificate they were made with.
func (r *certReloader) Reload() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, err := loadKeyPair(r.certFile, r.keyFile)
	if err != nil {
		return err
	}
	r.cur.Store(c)
	l := r.log.With("cert", r.certFile, "subject", c.Leaf.Subject.String(), "dns_names", c.Leaf.DNSNames,
		"not_after", c.Leaf.NotAfter.Format(time.RFC3339))
	switch left := time.Until(c.Leaf.NotAfter); {
	case left <= 0:
		l.Error("TLS certificate has expired; clients will refuse it")
	case left < 14*24*time.Hour:
		l.Warn("TLS certificate expires soon", "left", left.Round(time.Hour))
	default:
		l.Info("TLS certificate loaded")
	}
	return nil
}

// GetCertificate is tls.Config.GetCertificate.
func (r *certReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.cur.Load(), nil
}

// tls12Suites are the TLS 1.2 cipher suites offered (TLS 1.3 suites are
// not configurable, and all good).
var tls12Suites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// baseTLSConfig is the server side's TLS policy.
func baseTLSConfig(minVersion uint16, get func(*tls.ClientHelloInfo) (*tls.Certificate, error)) *tls.Config {
	if minVersion < tls.VersionTLS12 {
		minVersion = tls.VersionTLS12
	}
	return &tls.Config{
		MinVersion:     minVersion,
		CipherSuites:   tls12Suites,
		GetCertificate: get,
		NextProtos:     []string{"http/1.1"},
	}
}

// newACMEManager builds the autocert manager for a. It contacts the CA
// only when a client asks for one of the host names and no valid
// certificate is in the cache.
func newACMEManager(a *acmeSettings) *autocert.Manager {
	m := &autocert.Manager{
		Prompt:     autocert.AcceptTOS, // the configuration said accept_terms = true
		Cache:      autocert.DirCache(a.cacheDir),
		HostPolicy: autocert.HostWhitelist(a.hostNames...),
		Email:      a.email,
	}
	if a.directoryURL != "" {
		m.Client = &acme.Client{DirectoryURL: a.directoryURL}
	}
	return m
}

// acmeTLSConfig is baseTLSConfig with the manager's certificates, and
// the TLS-ALPN-01 challenge protocol (usable only if a port is 443).
func acmeTLSConfig(m *autocert.Manager, minVersion uint16) *tls.Config {
	c := baseTLSConfig(minVersion, m.GetCertificate)
	c.NextProtos = append(c.NextProtos, acme.ALPNProto)
	return c
}

// acmeHTTPHandler answers the CA's HTTP-01 challenges and nothing else.
func acmeHTTPHandler(m *autocert.Manager) http.Handler {
	return m.HTTPHandler(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "this port answers ACME HTTP-01 challenges only", http.StatusNotFound)
	}))
}
