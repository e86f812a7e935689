package auth

import (
	"crypto/subtle"
	"errors"
	"fmt"
)

// An open connection outlives the Store that admitted it: when the
// configuration is reloaded, the server asks the new Store about every
// connection (RecheckUser, RecheckAgent) and ends those whose credential
// is no longer accepted. For that a Principal remembers how it was
// admitted (an admission), never the secret itself: a token as its
// SHA-256, as the configuration file keeps it, and a password as the
// bcrypt hash it matched, the configuration's own string. Nothing kept
// in memory lets anyone log in, and a recheck needs no secret and no
// bcrypt work.

// accountKind says which list of a Store admitted a principal.
type accountKind uint8

const (
	kindNone  accountKind = iota // not admitted by a Store
	kindUser                     // a [[user]]
	kindAgent                    // an [[agent]]
)

// admission identifies the credential a Principal was admitted with.
type admission struct {
	kind   accountKind
	scheme Scheme // how the credential was presented
	// passwordHash is the bcrypt hash the password matched; "" when the
	// principal was admitted with a token, whose hash is token.
	passwordHash string
	token        TokenHash
}

// byToken is the admission of credentials c whose secret is a token.
func byToken(c Credentials) admission { return admission{scheme: c.Scheme, token: HashToken(c.Secret)} }

// Credential names what the principal was admitted with, for logs:
// "password", "token (bearer)", "token (basic)", "token (x-token)", or ""
// when no Store admitted it.
func (p *Principal) Credential() string {
	switch {
	case p == nil || p.admitted.kind == kindNone:
		return ""
	case p.admitted.passwordHash != "":
		return "password"
	}
	return "token (" + string(p.admitted.scheme) + ")"
}

// ErrRevoked is wrapped by every *Revoked.
var ErrRevoked = errors.New("credentials no longer accepted")

// Revoked is the answer of RecheckUser and RecheckAgent for an open
// connection whose credential the Store no longer accepts. Name is the
// principal's ("" for an anonymous connection); Reason is for the log
// and never holds a secret.
type Revoked struct {
	Name   string
	Reason string
}

func (r *Revoked) Error() string {
	if r.Name != "" {
		return fmt.Sprintf("credentials of %q no longer accepted: %s", r.Name, r.Reason)
	}
	return "credentials no longer accepted: " + r.Reason
}

// Unwrap makes a Revoked match ErrRevoked.
func (r *Revoked) Unwrap() error { return ErrRevoked }

// RecheckUser tells whether s still accepts the credential that user
// principal p was admitted with (by this Store or an earlier one), and
// returns the account's current rights (a new Principal that remembers
// the same admission) or a *Revoked.
//
// A user is revoked when its account is gone; when it came with a token
// that is no longer among the account's token_hashes; when it came with
// a password and the account's password_hash is no longer the hash that
// password matched (a changed password: the old one may be known to
// someone). Rights (cards, all_cards, admin) are taken as they are now.
//
// p nil stands for an anonymous connection of an open user port: it
// stays anonymous (nil, nil) while s has no users and is revoked once s
// has some, as a new connection without credentials would be refused. A
// user whose account is gone is revoked even when s has no users left,
// although a new connection would then be let in anonymously: removing
// an account ends its sessions. A nil Store has no accounts.
func (s *Store) RecheckUser(p *Principal) (*Principal, error) { return s.recheck(p, kindUser) }

// RecheckAgent is RecheckUser for card agents: p nil is an anonymous
// agent of an open card port; an agent is revoked when its account is
// gone or its token is no longer among the account's token_hashes.
// Otherwise its current rules are returned.
func (s *Store) RecheckAgent(p *Principal) (*Principal, error) { return s.recheck(p, kindAgent) }

// recheck is RecheckUser (kind kindUser) and RecheckAgent (kindAgent).
func (s *Store) recheck(p *Principal, kind accountKind) (*Principal, error) {
	port, what, open := "user", "a user", !s.HasUsers()
	if kind == kindAgent {
		port, what, open = "card", "a card agent", !s.HasAgents()
	}
	if p == nil {
		if open {
			return nil, nil
		}
		return nil, &Revoked{Reason: "the " + port + " port now requires credentials"}
	}
	adm := p.admitted
	if adm.kind != kind {
		return nil, &Revoked{Name: p.Name, Reason: "not admitted as " + what}
	}
	var now *Principal // the account's current rights
	var why string
	switch u, a := s.lookup(kind, p.Name); {
	case u != nil:
		now, why = u.principal(adm), adm.revokedBecause(u.PasswordHash, u.TokenHashes)
	case a != nil:
		now, why = a.principal(adm), adm.revokedBecause("", a.TokenHashes)
	default:
		why = "account removed"
	}
	if why != "" {
		return nil, &Revoked{Name: p.Name, Reason: why}
	}
	return now, nil
}

// lookup finds the user (kindUser) or agent (kindAgent) called name; a
// nil Store has none.
func (s *Store) lookup(kind accountKind, name string) (*User, *Agent) {
	switch {
	case s == nil:
		return nil, nil
	case kind == kindUser:
		return s.user(name), nil
	}
	return nil, s.agent(name)
}

// revokedBecause reports why an account with passwordHash and tokens no
// longer accepts the admission's credential, or "".
func (adm admission) revokedBecause(passwordHash string, tokens []TokenHash) string {
	if adm.passwordHash == "" {
		if !tokenHashIn(adm.token, tokens) {
			return "token removed"
		}
		return ""
	}
	switch {
	case passwordHash == "":
		return "password removed"
	case subtle.ConstantTimeCompare([]byte(adm.passwordHash), []byte(passwordHash)) != 1:
		return "password changed"
	}
	return ""
}
