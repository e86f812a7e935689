package auth

import (
	"encoding/base64"
	"errors"
	"net/http"
	"strings"
	"unicode/utf8"
)

// Scheme says how credentials were presented.
type Scheme string

// The schemes a request may use.
const (
	SchemeNone   Scheme = ""
	SchemeBasic  Scheme = "basic"   // Authorization: Basic (a URL's user:password@ becomes this)
	SchemeBearer Scheme = "bearer"  // Authorization: Bearer <token>
	SchemeHeader Scheme = "x-token" // X-WSRC-Token: <token>
)

// TokenHeader is the header agents may use instead of Authorization.
const TokenHeader = "X-WSRC-Token"

// maxCredentialLen bounds a presented name or secret. Longer ones cannot
// match anything configured and are refused before any hashing.
const maxCredentialLen = 512

// Credentials are what a request presents. Secret is a password or a
// token; Name is the user or agent name of Basic credentials ("" for a
// bare token).
type Credentials struct {
	Scheme Scheme
	Name   string
	Secret string
}

// ErrMalformed reports an Authorization or X-WSRC-Token header that
// cannot be read.
var ErrMalformed = errors.New("malformed credentials")

// FromRequest reads the credentials of an upgrade request: Authorization
// (Basic or Bearer) or else X-WSRC-Token. No credentials is not an error
// (Scheme is SchemeNone); an unreadable header is ErrMalformed.
func FromRequest(r *http.Request) (Credentials, error) {
	if vs := r.Header.Values("Authorization"); len(vs) > 0 {
		if len(vs) > 1 {
			return Credentials{}, malformed("more than one Authorization header")
		}
		return parseAuthorization(vs[0])
	}
	if vs := r.Header.Values(TokenHeader); len(vs) > 0 {
		if len(vs) > 1 {
			return Credentials{}, malformed("more than one " + TokenHeader + " header")
		}
		tok := strings.TrimSpace(vs[0])
		if err := checkSecret(tok); err != nil {
			return Credentials{}, err
		}
		return Credentials{Scheme: SchemeHeader, Secret: tok}, nil
	}
	return Credentials{}, nil
}

// parseAuthorization reads one Authorization header value.
func parseAuthorization(v string) (Credentials, error) {
	scheme, rest, _ := strings.Cut(strings.TrimSpace(v), " ")
	rest = strings.TrimSpace(rest)
	switch {
	case strings.EqualFold(scheme, "Bearer"):
		if err := checkSecret(rest); err != nil {
			return Credentials{}, err
		}
		return Credentials{Scheme: SchemeBearer, Secret: rest}, nil
	case strings.EqualFold(scheme, "Basic"):
		raw, err := base64.StdEncoding.DecodeString(rest)
		if err != nil {
			return Credentials{}, malformed("Basic credentials are not base64")
		}
		name, secret, ok := strings.Cut(string(raw), ":")
		if !ok {
			return Credentials{}, malformed("Basic credentials lack the colon between name and password")
		}
		if len(name) > maxCredentialLen || !printable(name) {
			return Credentials{}, malformed("unusable user name")
		}
		if err := checkSecret(secret); err != nil {
			return Credentials{}, err
		}
		return Credentials{Scheme: SchemeBasic, Name: name, Secret: secret}, nil
	}
	return Credentials{}, malformed("unsupported Authorization scheme (use Basic or Bearer)")
}

func checkSecret(s string) error {
	switch {
	case s == "":
		return malformed("empty secret")
	case len(s) > maxCredentialLen:
		return malformed("secret too long")
	}
	return nil
}

// printable reports whether s is valid UTF-8 without control characters
// (it ends up in logs).
func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

type malformedError struct{ why string }

func (e *malformedError) Error() string { return "malformed credentials: " + e.why }
func (e *malformedError) Is(target error) bool {
	return target == ErrMalformed
}

func malformed(why string) error { return &malformedError{why} }

// Challenge returns the WWW-Authenticate values of a 401 answer on a
// port: Basic (what a URL's user information sends) and Bearer.
func Challenge(realm string) []string {
	return []string{`Basic realm="` + realm + `", charset="UTF-8"`, `Bearer realm="` + realm + `"`}
}
