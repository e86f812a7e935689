package auth

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"strings"
	"testing"

	"go.uber.org/goleak"
	"golang.org/x/crypto/bcrypt"
)

func TestMain(m *testing.M) {
	// The stand-in hash for unknown users at the lowest cost too.
	h, _ := bcrypt.GenerateFromPassword([]byte("no such user"), bcrypt.MinCost)
	dummyHash = func() []byte { return h }
	goleak.VerifyTestMain(m)
}

// cheapHash hashes with bcrypt's lowest cost, to keep tests fast.
func cheapHash(t testing.TB, pw string) string {
	t.Helper()
	h, err := hashPasswordCost(pw, bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func newToken(t testing.TB) (string, TokenHash) {
	t.Helper()
	tok, err := GenerateToken()
	if err != nil {
		t.Fatal(err)
	}
	return tok, HashToken(tok)
}

func TestPasswordHash(t *testing.T) {
	h := cheapHash(t, "correct horse")
	if err := CheckPasswordHash(h); err != nil {
		t.Fatal(err)
	}
	if bcrypt.CompareHashAndPassword([]byte(h), []byte("correct horse")) != nil {
		t.Fatal("hash does not verify")
	}
	for _, bad := range []string{"", "$2a$10$short", "sha256:00", "plain"} {
		if CheckPasswordHash(bad) == nil {
			t.Errorf("CheckPasswordHash(%q) accepted", bad)
		}
	}
	if _, err := HashPassword(""); err == nil {
		t.Error("empty password hashed")
	}
	if _, err := HashPassword(strings.Repeat("x", 73)); !errors.Is(err, ErrPasswordTooLong) {
		t.Errorf("73-byte password: %v", err)
	}
}

func TestTokens(t *testing.T) {
	a, ha := newToken(t)
	b, _ := newToken(t)
	if a == b || !strings.HasPrefix(a, TokenPrefix) || len(a) != len(TokenPrefix)+43 {
		t.Fatalf("tokens %q %q", a, b)
	}
	if strings.ContainsAny(a, "+/=:@%") {
		t.Fatalf("token %q is not URL-safe", a)
	}
	s := ha.String()
	got, err := ParseTokenHash(s)
	if err != nil || got != ha {
		t.Fatalf("ParseTokenHash(%q) = %v, %v", s, got, err)
	}
	for _, bad := range []string{"", a, "sha256:", "sha256:" + strings.Repeat("0", 63), "sha256:" + strings.Repeat("g", 64), "SHA256:" + s[7:]} {
		if _, err := ParseTokenHash(bad); err == nil {
			t.Errorf("ParseTokenHash(%q) accepted", bad)
		} else if strings.Contains(err.Error(), a) {
			t.Errorf("error repeats the whole token: %v", err)
		}
	}
}

func basic(name, secret string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(name+":"+secret))
}

func TestFromRequest(t *testing.T) {
	cases := []struct {
		name    string
		headers map[string][]string
		want    Credentials
		bad     bool
	}{
		{"none", nil, Credentials{}, false},
		{"basic", map[string][]string{"Authorization": {basic("alice", "pw:with:colons")}}, Credentials{SchemeBasic, "alice", "pw:with:colons"}, false},
		{"basic lower case", map[string][]string{"Authorization": {"basic " + base64.StdEncoding.EncodeToString([]byte("a:b"))}}, Credentials{SchemeBasic, "a", "b"}, false},
		{"basic empty name", map[string][]string{"Authorization": {basic("", "tok")}}, Credentials{SchemeBasic, "", "tok"}, false},
		{"bearer", map[string][]string{"Authorization": {"Bearer  wsrc_abc "}}, Credentials{SchemeBearer, "", "wsrc_abc"}, false},
		{"header", map[string][]string{"X-Wsrc-Token": {"wsrc_abc"}}, Credentials{SchemeHeader, "", "wsrc_abc"}, false},
		{"authorization wins", map[string][]string{"Authorization": {"Bearer one"}, "X-Wsrc-Token": {"two"}}, Credentials{SchemeBearer, "", "one"}, false},
		{"two authorization", map[string][]string{"Authorization": {"Bearer a", "Bearer b"}}, Credentials{}, true},
		{"two tokens", map[string][]string{"X-Wsrc-Token": {"a", "b"}}, Credentials{}, true},
		{"digest", map[string][]string{"Authorization": {"Digest x"}}, Credentials{}, true},
		{"basic not base64", map[string][]string{"Authorization": {"Basic !!!"}}, Credentials{}, true},
		{"basic no colon", map[string][]string{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte("alice"))}}, Credentials{}, true},
		{"basic empty secret", map[string][]string{"Authorization": {basic("alice", "")}}, Credentials{}, true},
		{"basic control in name", map[string][]string{"Authorization": {basic("al\nice", "x")}}, Credentials{}, true},
		{"bearer empty", map[string][]string{"Authorization": {"Bearer"}}, Credentials{}, true},
		{"bearer huge", map[string][]string{"Authorization": {"Bearer " + strings.Repeat("x", 600)}}, Credentials{}, true},
		{"header empty", map[string][]string{"X-Wsrc-Token": {" "}}, Credentials{}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := &http.Request{Header: http.Header(tc.headers)}
			got, err := FromRequest(r)
			if tc.bad {
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("got %+v, %v; want ErrMalformed", got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

func testStore(t *testing.T) (s *Store, aliceTok, agentTok string) {
	t.Helper()
	aliceTok, ha := newToken(t)
	agentTok, hg := newToken(t)
	_, hb := newToken(t)
	s, err := NewStore([]User{
		{Name: "alice", PasswordHash: cheapHash(t, "alice-pw"), TokenHashes: []TokenHash{ha}, Cards: Rules{{ICCID: "8949*"}}},
		{Name: "root", PasswordHash: cheapHash(t, "root-pw"), Admin: true},
		{Name: "bot", TokenHashes: []TokenHash{hb}, AllCards: true},
	}, []Agent{
		{Name: "pi1", TokenHashes: []TokenHash{hg}, AllCards: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	return s, aliceTok, agentTok
}

func TestAuthenticateUser(t *testing.T) {
	s, aliceTok, agentTok := testStore(t)
	ctx := context.Background()
	ok := []struct {
		c    Credentials
		want string
	}{
		{Credentials{SchemeBasic, "alice", "alice-pw"}, "alice"},
		{Credentials{SchemeBasic, "alice", aliceTok}, "alice"},
		{Credentials{SchemeBasic, "", aliceTok}, "alice"},
		{Credentials{SchemeBearer, "", aliceTok}, "alice"},
		{Credentials{SchemeHeader, "", aliceTok}, "alice"},
		{Credentials{SchemeBasic, "root", "root-pw"}, "root"},
	}
	for _, tc := range ok {
		p, err := s.AuthenticateUser(ctx, tc.c)
		if err != nil || p.Name != tc.want {
			t.Errorf("%+v: %v, %v", tc.c, p, err)
		}
	}
	bad := []struct {
		c      Credentials
		reason string
	}{
		{Credentials{SchemeBasic, "alice", "bad-guess"}, "wrong password"},
		{Credentials{SchemeBasic, "bot", "anything"}, "wrong password"}, // token-only user
		{Credentials{SchemeBasic, "mallory", "x"}, "unknown user"},
		{Credentials{SchemeBasic, "root", aliceTok}, "wrong password"}, // another user's token
		{Credentials{SchemeBasic, "alice", strings.Repeat("x", 100)}, "wrong password"},
		{Credentials{SchemeBearer, "", "wsrc_nope"}, "unknown token"},
		{Credentials{SchemeBearer, "", agentTok}, "unknown token"}, // agents' tokens are not users'
		{Credentials{SchemeBasic, "", "wsrc_nope"}, "unknown token"},
	}
	for _, tc := range bad {
		p, err := s.AuthenticateUser(ctx, tc.c)
		var f *Failure
		if !errors.As(err, &f) || !errors.Is(err, ErrBadCredentials) || f.Reason != tc.reason {
			t.Errorf("%+v: %v, %v; want failure %q", tc.c, p, err, tc.reason)
		}
		if err != nil && strings.Contains(err.Error(), tc.c.Secret) {
			t.Errorf("error %q repeats the secret", err)
		}
	}
	if _, err := s.AuthenticateUser(ctx, Credentials{}); !errors.Is(err, ErrNoCredentials) {
		t.Errorf("no credentials: %v", err)
	}
}

func TestPrincipalMayUse(t *testing.T) {
	s, _, agentTok := testStore(t)
	alice, _ := s.AuthenticateUser(context.Background(), Credentials{SchemeBasic, "alice", "alice-pw"})
	root, _ := s.AuthenticateUser(context.Background(), Credentials{SchemeBasic, "root", "root-pw"})
	pi, err := s.AuthenticateAgent(Credentials{SchemeBearer, "", agentTok})
	if err != nil || pi.Name != "pi1" {
		t.Fatal(pi, err)
	}
	mine := Card{Agent: "pi1", ICCID: "8949440000001155314"}
	other := Card{Agent: "pi1", ICCID: "8901000000000000000"}
	if !alice.MayUse(mine) || alice.MayUse(other) || !root.MayUse(other) || !pi.MayUse(other) {
		t.Fatal("MayUse wrong")
	}
	if !root.Admin || alice.Admin {
		t.Fatal("admin flags wrong")
	}
}

func TestAuthenticateAgent(t *testing.T) {
	s, aliceTok, agentTok := testStore(t)
	for _, c := range []Credentials{{SchemeBearer, "", agentTok}, {SchemeHeader, "", agentTok}, {SchemeBasic, "pi1", agentTok}, {SchemeBasic, "", agentTok}} {
		if p, err := s.AuthenticateAgent(c); err != nil || p.Name != "pi1" {
			t.Errorf("%+v: %v %v", c, p, err)
		}
	}
	for _, c := range []Credentials{{SchemeBearer, "", aliceTok}, {SchemeBasic, "pi2", agentTok}, {SchemeHeader, "", "x"}} {
		if _, err := s.AuthenticateAgent(c); !errors.Is(err, ErrBadCredentials) {
			t.Errorf("%+v: %v, want a failure", c, err)
		}
	}
	if _, err := s.AuthenticateAgent(Credentials{}); !errors.Is(err, ErrNoCredentials) {
		t.Errorf("none: %v", err)
	}
}

// A flood of password checks waits for a slot; its context ends the wait.
func TestPasswordSlots(t *testing.T) {
	s, _, _ := testStore(t)
	for range cap(s.bcryptSlots) {
		s.bcryptSlots <- struct{}{}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.AuthenticateUser(ctx, Credentials{SchemeBasic, "alice", "alice-pw"}); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
}

func TestNewStoreErrors(t *testing.T) {
	_, h := newToken(t)
	pw := cheapHash(t, "x")
	cases := []struct {
		users  []User
		agents []Agent
		want   string
	}{
		{[]User{{Name: "", PasswordHash: pw}}, nil, "user[0].name: every user needs a name"},
		{[]User{{Name: "a", PasswordHash: pw}, {Name: "a", PasswordHash: pw}}, nil, "defined twice"},
		{[]User{{Name: "a"}}, nil, "user[0]: user \"a\" has neither password_hash nor token_hashes"},
		{[]User{{Name: "a", PasswordHash: pw, AllCards: true, Cards: Rules{{Agent: "x"}}}}, nil, "user[0].all_cards: all_cards and cards exclude each other"},
		{[]User{{Name: "a", PasswordHash: "secret"}}, nil, "not a bcrypt hash"},
		{[]User{{Name: "a", TokenHashes: []TokenHash{h}}}, []Agent{{Name: "b", TokenHashes: []TokenHash{h}}}, "agent[0].token_hashes: token also belongs to user \"a\""},
		{[]User{{Name: "a", PasswordHash: pw, Cards: Rules{{}}}}, nil, "cards[0]: rule has no pattern"},
		{nil, []Agent{{Name: "b"}}, "has no token"},
		{nil, []Agent{{Name: "b", TokenHashes: []TokenHash{h}, Cards: Rules{{Reader: `x\`}}}}, "agent[0].cards[0]: reader: pattern ends in a lone"},
		{nil, []Agent{{Name: "b\x00", TokenHashes: []TokenHash{h}}}, "printable"},
	}
	for _, tc := range cases {
		_, err := NewStore(tc.users, tc.agents)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("got %v, want %q", err, tc.want)
		}
	}
	var nilStore *Store
	if nilStore.HasUsers() || nilStore.HasAgents() {
		t.Error("nil store has accounts")
	}
}

func TestChallenge(t *testing.T) {
	c := Challenge("wsrc users")
	if len(c) != 2 || !strings.HasPrefix(c[0], `Basic realm="wsrc users"`) || !strings.HasPrefix(c[1], "Bearer ") {
		t.Fatal(c)
	}
}
