package agent

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
)

// TLSOptions say how the agent checks a wss:// server and proves itself to
// it. The zero value verifies the server against the system's CA roots
// and presents no client certificate.
type TLSOptions struct {
	// CAFile is a PEM file of CA certificates to trust instead of the
	// system roots (a private CA that signed the server's certificate).
	CAFile string
	// PinSHA256 lists SHA-256 fingerprints of server certificates to
	// accept: the hash of the certificate's DER encoding, as `openssl x509
	// -noout -fingerprint -sha256` prints it (hex, colons and case
	// optional). The server's own (leaf) certificate must match one.
	// Without CAFile a pin replaces CA verification: exactly the pinned
	// certificate is trusted, e.g. a self-signed one, and its names and
	// dates are not checked (the fingerprint already says which
	// certificate it is). With CAFile both checks apply. Several pins
	// allow a certificate to be replaced without a window of refusal.
	PinSHA256 []string
	// CertFile and KeyFile are a PEM client certificate and its private
	// key, presented when the server asks for one (mutual TLS). Both or
	// neither.
	CertFile, KeyFile string
}

// IsZero reports whether o asks for nothing beyond the defaults.
func (o TLSOptions) IsZero() bool {
	return o.CAFile == "" && len(o.PinSHA256) == 0 && o.CertFile == "" && o.KeyFile == ""
}

// ErrPinMismatch is wrapped by the error of a handshake whose server
// certificate matches none of TLSOptions.PinSHA256.
var ErrPinMismatch = errors.New("server certificate matches no pinned SHA-256 fingerprint")

// PinError reports the fingerprint of a server certificate that matched
// no pin, so that the log shows what the server presented.
type PinError struct {
	Got string // fingerprint of the server's certificate, colon-separated hex
}

func (e *PinError) Error() string {
	return fmt.Sprintf("%v (the server presented %s)", ErrPinMismatch, e.Got)
}

// Unwrap returns ErrPinMismatch.
func (e *PinError) Unwrap() error { return ErrPinMismatch }

// Fingerprint returns the SHA-256 fingerprint of a DER certificate in the
// form openssl prints it: upper-case hex pairs joined by colons.
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	h := strings.ToUpper(hex.EncodeToString(sum[:]))
	var b strings.Builder
	for i := 0; i < len(h); i += 2 {
		if i > 0 {
			b.WriteByte(':')
		}
		b.WriteString(h[i : i+2])
	}
	return b.String()
}

// ParsePin reads one fingerprint: 64 hex digits, optionally in colon- or
// space-separated pairs, optionally prefixed "sha256:" or "SHA256=".
func ParsePin(s string) ([sha256.Size]byte, error) {
	var pin [sha256.Size]byte
	t := strings.TrimSpace(s)
	for _, p := range []string{"sha256:", "sha256="} {
		if len(t) >= len(p) && strings.EqualFold(t[:len(p)], p) {
			t = t[len(p):]
		}
	}
	t = strings.NewReplacer(":", "", " ", "").Replace(t)
	b, err := hex.DecodeString(t)
	if err != nil || len(b) != sha256.Size {
		return pin, fmt.Errorf("pin %q: want a SHA-256 fingerprint, 64 hex digits (colons allowed)", s)
	}
	copy(pin[:], b)
	return pin, nil
}

// Config builds the tls.Config for wss:// connections: it reads CAFile
// and the client certificate now, so that a bad file is reported at
// start, with its name.
func (o TLSOptions) Config() (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("reading CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s: no PEM certificate in it", o.CAFile)
		}
		cfg.RootCAs = pool
	}
	switch {
	case o.CertFile != "" && o.KeyFile != "":
		cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("loading client certificate %s and key %s: %w", o.CertFile, o.KeyFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	case o.CertFile != "" || o.KeyFile != "":
		return nil, errors.New("a client certificate needs both a certificate file and a key file")
	}
	if len(o.PinSHA256) == 0 {
		return cfg, nil
	}
	pins := make(map[[sha256.Size]byte]bool, len(o.PinSHA256))
	for _, s := range o.PinSHA256 {
		p, err := ParsePin(s)
		if err != nil {
			return nil, err
		}
		pins[p] = true
	}
	if o.CAFile == "" {
		// The pin is the trust: no chain or name to verify.
		cfg.InsecureSkipVerify = true
	}
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("the server presented no certificate")
		}
		leaf := cs.PeerCertificates[0].Raw
		if !pins[sha256.Sum256(leaf)] {
			return &PinError{Got: Fingerprint(leaf)}
		}
		return nil
	}
	return cfg, nil
}

// explainTLS rewords the certificate errors a dial can meet into what an
// operator should check; other errors pass unchanged.
func explainTLS(err error) error {
	var (
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
	)
	switch {
	case errors.As(err, &unknown):
		return fmt.Errorf("server certificate not trusted: it is not signed by a CA the agent trusts (the system roots, or tls ca_file): %w", err)
	case errors.As(err, &hostname):
		return fmt.Errorf("server certificate is not valid for the host in the server URL: %w", err)
	case errors.As(err, &invalid):
		return fmt.Errorf("server certificate rejected: %w", err)
	}
	return err
}
