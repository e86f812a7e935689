package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/bcrypt"
)

// Passwords are stored as bcrypt hashes ("$2a$10$..."): a slow, salted
// hash whose string names its own algorithm and cost, verified in
// constant time by golang.org/x/crypto/bcrypt. bcrypt reads at most 72
// bytes of a password; longer ones are refused rather than truncated.
//
// Tokens are random (256 bits) and so need no slow hash: they are stored
// as "sha256:<hex>" and compared in constant time. A stolen configuration
// file therefore reveals neither passwords nor tokens.

// PasswordCost is the bcrypt cost HashPassword uses: about 50–100 ms per
// check on one core of a small server, paid once per connection that
// authenticates with a password.
const PasswordCost = bcrypt.DefaultCost

// MaxPasswordLen is the longest password bcrypt can take.
const MaxPasswordLen = 72

// ErrPasswordTooLong is returned for passwords over MaxPasswordLen bytes.
var ErrPasswordTooLong = fmt.Errorf("password longer than %d bytes (bcrypt's limit); use a token for longer secrets", MaxPasswordLen)

// HashPassword returns the bcrypt hash of password for a configuration
// file.
func HashPassword(password string) (string, error) {
	return hashPasswordCost(password, PasswordCost)
}

func hashPasswordCost(password string, cost int) (string, error) {
	if password == "" {
		return "", errors.New("empty password")
	}
	if len(password) > MaxPasswordLen {
		return "", ErrPasswordTooLong
	}
	h, err := bcrypt.GenerateFromPassword([]byte(password), cost)
	if err != nil {
		return "", fmt.Errorf("hashing password: %w", err)
	}
	return string(h), nil
}

// CheckPasswordHash reports whether s is a usable bcrypt hash.
func CheckPasswordHash(s string) error {
	if _, err := bcrypt.Cost([]byte(s)); err != nil {
		return fmt.Errorf("not a bcrypt hash (make one with `wsrc-server hash-password`): %w", err)
	}
	return nil
}

// TokenPrefix starts every generated token, so that secret scanners and
// people recognise one.
const TokenPrefix = "wsrc_"

// tokenBytes is the entropy of a token.
const tokenBytes = 32

// GenerateToken returns a new random token: TokenPrefix and 43
// URL-safe characters, so it can stand in a URL's user information
// (wss://name:TOKEN@host/) without escaping.
func GenerateToken() (string, error) {
	b := make([]byte, tokenBytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generating token: %w", err)
	}
	return TokenPrefix + base64.RawURLEncoding.EncodeToString(b), nil
}

// tokenHashPrefix starts a stored token hash.
const tokenHashPrefix = "sha256:"

// TokenHash is the stored form of a token: its SHA-256.
type TokenHash [sha256.Size]byte

// HashToken returns the hash of token.
func HashToken(token string) TokenHash { return sha256.Sum256([]byte(token)) }

// String returns the configuration-file form, "sha256:<64 hex digits>".
func (h TokenHash) String() string { return tokenHashPrefix + hex.EncodeToString(h[:]) }

// ParseTokenHash reads the configuration-file form of a token hash.
func ParseTokenHash(s string) (TokenHash, error) {
	var h TokenHash
	rest, ok := strings.CutPrefix(s, tokenHashPrefix)
	if !ok {
		return h, fmt.Errorf("token hash %q does not start with %q (make one with `wsrc-server gen-token`)", short(s), tokenHashPrefix)
	}
	if len(rest) != 2*len(h) {
		return h, fmt.Errorf("token hash has %d hex digits, want %d", len(rest), 2*len(h))
	}
	if _, err := hex.Decode(h[:], []byte(rest)); err != nil {
		return h, fmt.Errorf("token hash: %w", err)
	}
	return h, nil
}

// short cuts s for an error message that must not print a whole secret
// someone put in the wrong place.
func short(s string) string {
	if len(s) > 12 {
		return s[:8] + "…"
	}
	return s
}
