package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/wsrc-go/wsrc/client"
)

// connOptions are the client options every command's connection takes
// from the common flags: the request timeout, the user's token (a
// bearer token: --token-file, $WSRC_TOKEN, or the systemd credential
// wsrc-token) and the CA of --tls-ca-file. Problems with them are usage
// errors.
func (cl *cli) connOptions(o *options) ([]client.Option, error) {
	opts := []client.Option{client.WithRequestTimeout(o.timeout)}
	token, err := cl.token(o.tokenFile)
	if err != nil {
		return nil, err
	}
	if token != "" {
		opts = append(opts, client.WithHeader(http.Header{"Authorization": {"Bearer " + token}}))
	}
	if o.caFile != "" {
		cfg, err := caConfig(o.caFile)
		if err != nil {
			return nil, usagef("", "--tls-ca-file: %v", err)
		}
		opts = append(opts, client.WithTLSConfig(cfg))
	}
	return opts, nil
}

// token finds the user's token: --token-file, $WSRC_TOKEN, or the
// systemd credential wsrc-token; "" when none is given.
func (cl *cli) token(file string) (string, error) {
	from := "--token-file"
	if file == "" {
		if t := strings.TrimSpace(cl.getenv("WSRC_TOKEN")); t != "" {
			return t, nil
		}
		dir := cl.getenv("CREDENTIALS_DIRECTORY")
		if dir == "" {
			return "", nil
		}
		file, from = filepath.Join(dir, "wsrc-token"), "systemd credential wsrc-token"
		if _, err := os.Stat(file); errors.Is(err, os.ErrNotExist) {
			return "", nil
		}
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", usagef("", "%s: %v", from, err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" || strings.ContainsAny(t, " \t\r\n") {
		return "", usagef("", "%s: %s holds no token (one line, no spaces)", from, file)
	}
	return t, nil
}

// caConfig trusts the PEM certificates in file.
func caConfig(file string) (*tls.Config, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", file)
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}
