package auth

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// recheckWorld is a first Store and the principals it admitted.
type recheckWorld struct {
	aliceTok, agentTok string
	aliceHash          string // alice's password hash
	alicePw            *Principal
	aliceTok1          *Principal // by bearer token
	aliceTok2          *Principal // by Basic name and token
	root               *Principal // admin, by password
	agent              *Principal
}

func newRecheckWorld(t *testing.T) (*Store, recheckWorld) {
	t.Helper()
	s, aliceTok, agentTok := testStore(t)
	w := recheckWorld{aliceTok: aliceTok, agentTok: agentTok, aliceHash: s.user("alice").PasswordHash}
	ctx := context.Background()
	var err error
	must := func(p *Principal, e error) *Principal {
		t.Helper()
		if e != nil {
			t.Fatal(e)
		}
		return p
	}
	w.alicePw = must(s.AuthenticateUser(ctx, Credentials{SchemeBasic, "alice", "alice-pw"}))
	w.aliceTok1 = must(s.AuthenticateUser(ctx, Credentials{SchemeBearer, "", aliceTok}))
	w.aliceTok2 = must(s.AuthenticateUser(ctx, Credentials{SchemeBasic, "alice", aliceTok}))
	w.root = must(s.AuthenticateUser(ctx, Credentials{SchemeBasic, "root", "root-pw"}))
	w.agent, err = s.AuthenticateAgent(Credentials{SchemeBearer, "", agentTok})
	if err != nil {
		t.Fatal(err)
	}
	return s, w
}

func mustStore(t *testing.T, users []User, agents []Agent) *Store {
	t.Helper()
	s, err := NewStore(users, agents)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// The same Store accepts every principal it admitted, with the same
// rights; the credential's kind is told, never the secret kept.
func TestRecheckSameStore(t *testing.T) {
	s, w := newRecheckWorld(t)
	for _, p := range []*Principal{w.alicePw, w.aliceTok1, w.aliceTok2, w.root} {
		got, err := s.RecheckUser(p)
		if err != nil || got.Name != p.Name || got.Admin != p.Admin || got.AllCards != p.AllCards || len(got.Cards) != len(p.Cards) {
			t.Errorf("%s: %+v, %v", p.Name, got, err)
		}
		// What it remembers is enough for the next check too.
		if again, err := s.RecheckUser(got); err != nil || again.Name != p.Name {
			t.Errorf("%s again: %v", p.Name, err)
		}
	}
	if got, err := s.RecheckAgent(w.agent); err != nil || got.Name != "pi1" || !got.AllCards {
		t.Errorf("agent: %+v, %v", got, err)
	}
	for p, want := range map[*Principal]string{w.alicePw: "password", w.aliceTok1: "token (bearer)", w.aliceTok2: "token (basic)", w.agent: "token (bearer)", {Name: "x"}: "", nil: ""} {
		if got := p.Credential(); got != want {
			t.Errorf("Credential() = %q, want %q", got, want)
		}
	}
	for _, p := range []*Principal{w.alicePw, w.aliceTok1, w.aliceTok2, w.agent} {
		dump := fmt.Sprintf("%#v", *p)
		for _, secret := range []string{"alice-pw", w.aliceTok, w.agentTok} {
			if strings.Contains(dump, secret) {
				t.Errorf("principal %s keeps a secret: %s", p.Name, dump)
			}
		}
	}
}

// A new Store: rights follow the new configuration; a credential no
// longer accepted is revoked, with the reason.
func TestRecheckNewStore(t *testing.T) {
	old, w := newRecheckWorld(t)
	_, otherHash := newToken(t)
	aliceTokHash := HashToken(w.aliceTok)
	agentTokHash := HashToken(w.agentTok)
	rootHash := old.user("root").PasswordHash
	newPw := cheapHash(t, "alice-pw") // the same password, hashed again: another hash

	type check struct {
		p      *Principal
		agent  bool
		revoke string // the reason, "" when accepted
	}
	for _, tc := range []struct {
		name   string
		users  []User
		agents []Agent
		checks []check
		after  func(t *testing.T, s *Store)
	}{
		{
			name: "rules narrowed, admin removed",
			users: []User{
				{Name: "alice", PasswordHash: w.aliceHash, TokenHashes: []TokenHash{aliceTokHash}, Cards: Rules{{ICCID: "8901*"}}},
				{Name: "root", PasswordHash: rootHash},
			},
			agents: []Agent{{Name: "pi1", TokenHashes: []TokenHash{agentTokHash}, Cards: Rules{{Reader: "A"}}}},
			checks: []check{{p: w.alicePw}, {p: w.aliceTok1}, {p: w.root}, {p: w.agent, agent: true}},
			after: func(t *testing.T, s *Store) {
				a, _ := s.RecheckUser(w.alicePw)
				if a.MayUse(Card{ICCID: "8949440000001155314"}) || !a.MayUse(Card{ICCID: "8901000000000000000"}) {
					t.Error("alice's new rules not applied")
				}
				if r, _ := s.RecheckUser(w.root); r.Admin || r.MayUse(Card{ICCID: "1"}) {
					t.Error("root is still an admin")
				}
				if g, _ := s.RecheckAgent(w.agent); g.AllCards || g.MayUse(Card{Reader: "B"}) || !g.MayUse(Card{Reader: "A"}) {
					t.Error("agent's new rules not applied")
				}
			},
		},
		{
			name:   "token removed",
			users:  []User{{Name: "alice", PasswordHash: w.aliceHash, TokenHashes: []TokenHash{otherHash}}},
			agents: []Agent{{Name: "pi1", TokenHashes: []TokenHash{HashToken("wsrc_new")}}},
			checks: []check{{p: w.alicePw}, {p: w.aliceTok1, revoke: "token removed"}, {p: w.aliceTok2, revoke: "token removed"},
				{p: w.root, revoke: "account removed"}, {p: w.agent, agent: true, revoke: "token removed"}},
		},
		{
			name:   "password changed",
			users:  []User{{Name: "alice", PasswordHash: newPw, TokenHashes: []TokenHash{aliceTokHash}}, {Name: "root", TokenHashes: []TokenHash{otherHash}}},
			checks: []check{{p: w.alicePw, revoke: "password changed"}, {p: w.aliceTok1}, {p: w.root, revoke: "password removed"}},
		},
		{
			name:   "token moved to another account",
			users:  []User{{Name: "bob", TokenHashes: []TokenHash{aliceTokHash}}},
			agents: []Agent{{Name: "pi9", TokenHashes: []TokenHash{agentTokHash}}},
			checks: []check{{p: w.aliceTok1, revoke: "account removed"}, {p: w.agent, agent: true, revoke: "account removed"}},
		},
		{
			name:   "wrong list",
			users:  []User{{Name: "pi1", TokenHashes: []TokenHash{otherHash}}},
			agents: []Agent{{Name: "alice", TokenHashes: []TokenHash{aliceTokHash}}},
			checks: []check{{p: w.agent, revoke: "not admitted as a user"}, {p: w.aliceTok1, agent: true, revoke: "not admitted as a card agent"},
				{p: &Principal{Name: "alice"}, agent: true, revoke: "not admitted"}},
		},
		{
			name:   "no accounts left",
			checks: []check{{p: w.alicePw, revoke: "account removed"}, {p: w.agent, agent: true, revoke: "account removed"}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := mustStore(t, tc.users, tc.agents)
			for _, c := range tc.checks {
				recheck := s.RecheckUser
				if c.agent {
					recheck = s.RecheckAgent
				}
				got, err := recheck(c.p)
				var r *Revoked
				switch {
				case c.revoke == "" && err != nil:
					t.Errorf("%s: %v", c.p.Name, err)
				case c.revoke == "" && got.Name != c.p.Name:
					t.Errorf("%s: became %q", c.p.Name, got.Name)
				case c.revoke != "" && (!errors.As(err, &r) || !errors.Is(err, ErrRevoked) || !strings.Contains(r.Reason, c.revoke) || r.Name != c.p.Name || got != nil):
					t.Errorf("%s (%s): %+v, %v; want revoked: %s", c.p.Name, c.p.Credential(), got, err, c.revoke)
				}
			}
			if tc.after != nil {
				tc.after(t, s)
			}
		})
	}
}

// Anonymous connections of an open port stay while the port has no
// accounts and are revoked once it has some; a nil Store has none.
func TestRecheckAnonymous(t *testing.T) {
	_, h := newToken(t)
	users := mustStore(t, []User{{Name: "u", TokenHashes: []TokenHash{h}}}, nil)
	var none *Store
	for _, s := range []*Store{none, mustStore(t, nil, nil)} {
		if p, err := s.RecheckUser(nil); p != nil || err != nil {
			t.Errorf("open user port: %v, %v", p, err)
		}
		if p, err := s.RecheckAgent(nil); p != nil || err != nil {
			t.Errorf("open card port: %v, %v", p, err)
		}
	}
	if _, err := users.RecheckUser(nil); !errors.Is(err, ErrRevoked) || !strings.Contains(err.Error(), "user port now requires credentials") {
		t.Errorf("user port with accounts: %v", err)
	}
	if p, err := users.RecheckAgent(nil); p != nil || err != nil {
		t.Errorf("card port still open: %v, %v", p, err)
	}
	agents := mustStore(t, nil, []Agent{{Name: "a", TokenHashes: []TokenHash{h}}})
	if _, err := agents.RecheckAgent(nil); !errors.Is(err, ErrRevoked) || !strings.Contains(err.Error(), "card port now requires credentials") {
		t.Errorf("card port with accounts: %v", err)
	}
	if _, err := none.RecheckUser(&Principal{Name: "u"}); !errors.Is(err, ErrRevoked) {
		t.Errorf("nil store: %v", err)
	}
}
