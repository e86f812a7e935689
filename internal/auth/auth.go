// Package auth decides who is at the other end of a WebSocket upgrade
// request to wsrc-server, and which cards they may use.
//
// Place in the data flow: server/daemon (wsrc-server) reads users and agents from its
// configuration file into a Store; package server asks the Store about
// every upgrade request, before the WebSocket exists, and refuses
// unauthenticated requests with 401 (so they never reach hello). The
// Principal it gets back travels with the connection: its Rules decide
// which cards a user may list and select, and which cards an agent may
// register. A Throttle slows down addresses that keep failing.
//
// When the configuration changes (a new Store), RecheckUser and
// RecheckAgent tell, for a connection that is already open, whether the
// new Store still accepts the credential it was admitted with, and with
// which rights. A Principal remembers that credential without its secret
// (recheck.go).
//
// Credentials (see FromRequest): users send HTTP Basic (name and password
// or name and token; pySim's clients send this from a URL such as
// wss://alice:secret@host:4220/) or a bearer token; agents send their
// token as "Authorization: Bearer", as "X-WSRC-Token", or as the password
// of Basic credentials whose name is the agent's. Passwords are stored as
// bcrypt hashes, tokens as SHA-256 hashes (secret.go says why); every
// comparison of secrets is constant-time.
package auth

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"sync"

	"golang.org/x/crypto/bcrypt"
)

// Principal is an authenticated user or agent.
type Principal struct {
	Name string
	// Admin users see every card and the agents' network addresses.
	Admin bool
	// AllCards allows every card; otherwise Cards decides.
	AllCards bool
	Cards    Rules

	// admitted is the credential the principal was authenticated with,
	// without its secret (see Recheck); zero when no Store made it.
	admitted admission
}

// MayUse reports whether the principal may list and select (a user) or
// register (an agent) card c.
func (p *Principal) MayUse(c Card) bool {
	return p.Admin || p.AllCards || p.Cards.Match(c)
}

// User is one user account as configured.
type User struct {
	Name string
	// PasswordHash is a bcrypt hash; "" when the user has tokens only.
	PasswordHash string
	// TokenHashes are the user's tokens, usable as bearer tokens or as
	// the password of Basic credentials.
	TokenHashes []TokenHash
	Admin       bool
	AllCards    bool
	Cards       Rules
}

// Agent is one card agent as configured: its token lets it register
// cards (all of them when AllCards, else those Cards matches).
type Agent struct {
	Name        string
	TokenHashes []TokenHash
	AllCards    bool
	Cards       Rules
}

// Store holds the configured users and agents. It is immutable: to change
// the configuration, build a new Store. Safe for concurrent use.
type Store struct {
	users  []User
	agents []Agent
	// bcryptSlots bounds concurrent password checks, so that a flood of
	// wrong passwords cannot take every core from the relay.
	bcryptSlots chan struct{}
}

// AccountError is a mistake in one account that NewStore found, with
// where it is, so that a configuration loader can point at the line:
// Kind is "user" or "agent", Index the account's place in the slice
// NewStore got, Field the setting ("name", "password_hash",
// "token_hashes", "all_cards", "cards[2]"; "" for the account as a whole).
type AccountError struct {
	Kind  string
	Index int
	Field string
	Err   error
}

func (e *AccountError) Error() string {
	where := fmt.Sprintf("%s[%d]", e.Kind, e.Index)
	if e.Field != "" {
		where += "." + e.Field
	}
	return where + ": " + e.Err.Error()
}

func (e *AccountError) Unwrap() error { return e.Err }

// NewStore checks users and agents (names unique, non-empty and
// printable, every account with a secret, every hash and rule valid,
// all_cards and cards not both, no token shared) and returns a Store.
// Its error joins an *AccountError for each mistake.
func NewStore(users []User, agents []Agent) (*Store, error) {
	var errs []error
	add := func(kind string, i int, field string, format string, args ...any) {
		errs = append(errs, &AccountError{Kind: kind, Index: i, Field: field, Err: fmt.Errorf(format, args...)})
	}
	seenTok := map[TokenHash]string{}
	checkToks := func(kind string, i int, who string, hs []TokenHash) {
		for _, h := range hs {
			if prev, dup := seenTok[h]; dup {
				add(kind, i, "token_hashes", "token also belongs to %s", prev)
			}
			seenTok[h] = who
		}
	}
	checkRules := func(kind string, i int, rs Rules) {
		for j, r := range rs {
			if err := r.Validate(); err != nil {
				add(kind, i, fmt.Sprintf("cards[%d]", j), "%w", err)
			}
		}
	}
	checkName := func(kind string, i int, name string, names map[string]bool) {
		switch {
		case name == "":
			add(kind, i, "name", "every %s needs a name", kind)
		case !printable(name) || len(name) > maxCredentialLen:
			add(kind, i, "name", "%s name %q: must be printable text of at most %d bytes", kind, name, maxCredentialLen)
		case names[name]:
			add(kind, i, "name", "%s %q is defined twice", kind, name)
		}
		names[name] = true
	}
	names := map[string]bool{}
	for i, u := range users {
		who := fmt.Sprintf("user %q", u.Name)
		checkName("user", i, u.Name, names)
		if u.PasswordHash == "" && len(u.TokenHashes) == 0 {
			add("user", i, "", "%s has neither password_hash nor token_hashes", who)
		}
		if u.PasswordHash != "" {
			if err := CheckPasswordHash(u.PasswordHash); err != nil {
				add("user", i, "password_hash", "%w", err)
			}
		}
		if u.AllCards && len(u.Cards) > 0 {
			add("user", i, "all_cards", "all_cards and cards exclude each other")
		}
		checkToks("user", i, who, u.TokenHashes)
		checkRules("user", i, u.Cards)
	}
	names = map[string]bool{}
	for i, a := range agents {
		who := fmt.Sprintf("agent %q", a.Name)
		checkName("agent", i, a.Name, names)
		if len(a.TokenHashes) == 0 {
			add("agent", i, "token_hashes", "%s has no token (make one with `wsrc-server gen-token`)", who)
		}
		checkToks("agent", i, who, a.TokenHashes)
		checkRules("agent", i, a.Cards)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &Store{users: users, agents: agents, bcryptSlots: make(chan struct{}, runtime.GOMAXPROCS(0))}, nil
}

// HasUsers reports whether any user is configured: if not, the user port
// has no authentication.
func (s *Store) HasUsers() bool { return s != nil && len(s.users) > 0 }

// HasAgents reports whether any agent is configured: if not, the card
// port has no authentication.
func (s *Store) HasAgents() bool { return s != nil && len(s.agents) > 0 }

// ErrNoCredentials means the request presented none.
var ErrNoCredentials = errors.New("no credentials")

// ErrBadCredentials is wrapped by every *Failure.
var ErrBadCredentials = errors.New("invalid credentials")

// Failure is a failed authentication: credentials were presented and do
// not match. Name is the name they claimed ("" for a bare token); Reason
// is for the log only (the peer is told nothing more than 401).
type Failure struct {
	Name   string
	Reason string
}

func (f *Failure) Error() string {
	if f.Name != "" {
		return fmt.Sprintf("invalid credentials for %q: %s", f.Name, f.Reason)
	}
	return "invalid credentials: " + f.Reason
}

// Unwrap makes a Failure match ErrBadCredentials.
func (f *Failure) Unwrap() error { return ErrBadCredentials }

// dummyHash is checked against when a claimed user does not exist, so
// that the answer takes as long as for a wrong password.
// It is made on first use: program start-up should not pay for it. (A
// variable for tests, which use cheap hashes.)
var dummyHash = sync.OnceValue(func() []byte {
	h, err := bcrypt.GenerateFromPassword([]byte("no such user"), PasswordCost)
	if err != nil {
		panic(err) // cannot happen: a valid cost and a short password
	}
	return h
})

// AuthenticateUser checks a user's credentials. It returns
// ErrNoCredentials, a *Failure (also for malformed ones), ctx's error while
// waiting for a free password-check slot, or the user.
func (s *Store) AuthenticateUser(ctx context.Context, c Credentials) (*Principal, error) {
	switch c.Scheme {
	case SchemeNone:
		return nil, ErrNoCredentials
	case SchemeBearer, SchemeHeader:
		if u := s.userByToken(c.Secret); u != nil {
			return u.principal(byToken(c)), nil
		}
		return nil, &Failure{Reason: "unknown token"}
	}
	u := s.user(c.Name)
	if c.Name == "" {
		// wss://:TOKEN@host/ — a token without a name.
		if u := s.userByToken(c.Secret); u != nil {
			return u.principal(byToken(c)), nil
		}
		return nil, &Failure{Reason: "unknown token"}
	}
	if u != nil && tokenIn(c.Secret, u.TokenHashes) {
		return u.principal(byToken(c)), nil
	}
	var hash []byte
	if u != nil && u.PasswordHash != "" {
		hash = []byte(u.PasswordHash)
	} else {
		hash = dummyHash()
	}
	if len(c.Secret) > MaxPasswordLen {
		return nil, &Failure{Name: c.Name, Reason: "wrong password"}
	}
	select {
	case s.bcryptSlots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	err := bcrypt.CompareHashAndPassword(hash, []byte(c.Secret))
	<-s.bcryptSlots
	switch {
	case u == nil:
		return nil, &Failure{Name: c.Name, Reason: "unknown user"}
	case u.PasswordHash == "" || err != nil:
		return nil, &Failure{Name: c.Name, Reason: "wrong password"}
	}
	return u.principal(admission{scheme: c.Scheme, passwordHash: u.PasswordHash}), nil
}

// AuthenticateAgent checks an agent's token. It returns ErrNoCredentials,
// a *Failure or the agent.
func (s *Store) AuthenticateAgent(c Credentials) (*Principal, error) {
	if c.Scheme == SchemeNone {
		return nil, ErrNoCredentials
	}
	tok := HashToken(c.Secret)
	var found *Agent
	for i := range s.agents {
		a := &s.agents[i]
		if tokenHashIn(tok, a.TokenHashes) && found == nil {
			found = a
		}
	}
	switch {
	case found == nil:
		return nil, &Failure{Name: c.Name, Reason: "unknown token"}
	case c.Scheme == SchemeBasic && c.Name != "" && c.Name != found.Name:
		return nil, &Failure{Name: c.Name, Reason: "token belongs to another agent"}
	}
	return found.principal(byToken(c)), nil
}

func (s *Store) user(name string) *User {
	for i := range s.users {
		if s.users[i].Name == name {
			return &s.users[i]
		}
	}
	return nil
}

func (s *Store) agent(name string) *Agent {
	for i := range s.agents {
		if s.agents[i].Name == name {
			return &s.agents[i]
		}
	}
	return nil
}

// userByToken looks at every user's tokens, without stopping early.
func (s *Store) userByToken(secret string) *User {
	tok := HashToken(secret)
	var found *User
	for i := range s.users {
		if tokenHashIn(tok, s.users[i].TokenHashes) && found == nil {
			found = &s.users[i]
		}
	}
	return found
}

// principal returns the user's rights, admitted with adm.
func (u *User) principal(adm admission) *Principal {
	adm.kind = kindUser
	return &Principal{Name: u.Name, Admin: u.Admin, AllCards: u.AllCards, Cards: u.Cards, admitted: adm}
}

// principal returns the agent's rights, admitted with adm.
func (a *Agent) principal(adm admission) *Principal {
	adm.kind = kindAgent
	return &Principal{Name: a.Name, AllCards: a.AllCards, Cards: a.Cards, admitted: adm}
}

func tokenIn(secret string, hs []TokenHash) bool { return tokenHashIn(HashToken(secret), hs) }

// tokenHashIn compares tok with every hash in constant time.
func tokenHashIn(tok TokenHash, hs []TokenHash) bool {
	found := 0
	for _, h := range hs {
		found |= subtle.ConstantTimeCompare(h[:], tok[:])
	}
	return found == 1
}

// UserRequest authenticates the user of an upgrade request. It returns
// nil, nil when no user is configured: the user port is open. Malformed
// credentials are a *Failure.
func (s *Store) UserRequest(r *http.Request) (*Principal, error) {
	if !s.HasUsers() {
		return nil, nil
	}
	c, err := FromRequest(r)
	if err != nil {
		return nil, &Failure{Reason: err.Error()}
	}
	return s.AuthenticateUser(r.Context(), c)
}

// AgentRequest authenticates the card agent of an upgrade request. It
// returns nil, nil when no agent is configured: the card port is open.
func (s *Store) AgentRequest(r *http.Request) (*Principal, error) {
	if !s.HasAgents() {
		return nil, nil
	}
	c, err := FromRequest(r)
	if err != nil {
		return nil, &Failure{Reason: err.Error()}
	}
	return s.AuthenticateAgent(c)
}

// UserCount returns the number of users (0 for a nil Store).
func (s *Store) UserCount() int {
	if s == nil {
		return 0
	}
	return len(s.users)
}

// AgentCount returns the number of agents (0 for a nil Store).
func (s *Store) AgentCount() int {
	if s == nil {
		return 0
	}
	return len(s.agents)
}
