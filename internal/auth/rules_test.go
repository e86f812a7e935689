package auth

import (
	"net/http"
	"strings"
	"testing"
	"testing/synctest"
	"time"
	"unicode/utf8"
)

var globCases = []struct {
	pattern, s string
	want       bool
}{
	{"", "", true},
	{"", "x", false},
	{"*", "", true},
	{"*", "anything at all", true},
	{"8949*", "8949440000001155314", true},
	{"8949*", "8901440000001155314", false},
	{"*314", "8949440000001155314", true},
	{"89?9*", "8949", true},
	{"89?9*", "899", false},
	{"lab-pi*", "LAB-PI4", true},
	{"*Gemalto*", "Gemalto PC Twin Reader 00 00", true},
	{"a*b*c", "aXXbYYc", true},
	{"a*b*c", "aXXcYYb", false},
	{"a**", "a", true},
	{`a\*`, "a*", true},
	{`a\*`, "ab", false},
	{`a\?`, "a?", true},
	{`\\`, `\`, true},
	{"é*", "Éa", true},
	{"?", "é", true},
	{"*a*a*a*a*a*a*b", strings.Repeat("a", 200), false},
}

func TestGlob(t *testing.T) {
	for _, tc := range globCases {
		if got := Glob(tc.pattern, tc.s); got != tc.want {
			t.Errorf("Glob(%q, %q) = %v, want %v", tc.pattern, tc.s, got, tc.want)
		}
	}
}

func TestValidPattern(t *testing.T) {
	for p, ok := range map[string]bool{"": true, "ab*": true, `a\\`: true, `a\`: false, `a\\\`: false,
		"a\tb": false, "\xff": false, strings.Repeat("x", MaxPatternLen+1): false} {
		if got := ValidPattern(p) == nil; got != ok {
			t.Errorf("ValidPattern(%q) ok=%v, want %v", p, got, ok)
		}
	}
}

func TestRules(t *testing.T) {
	c := Card{Agent: "lab-pi1", Reader: "Gemalto PC Twin Reader 00 00", ATR: "3b9f96", ICCID: "8949440000001155314", EID: "89049032123451234512345678901235"}
	for _, tc := range []struct {
		r    Rule
		want bool
	}{
		{Rule{Agent: "lab-*"}, true},
		{Rule{Agent: "lab-*", Reader: "*Omnikey*"}, false},
		{Rule{Agent: "lab-*", Reader: "*gemalto*"}, true},
		{Rule{ICCID: "8949*"}, true},
		{Rule{EID: "8904903212345*"}, true},
		{Rule{ATR: "3B9F*"}, true},
		{Rule{ATR: "3b00"}, false},
	} {
		if got := tc.r.Match(c); got != tc.want {
			t.Errorf("%+v.Match = %v, want %v", tc.r, got, tc.want)
		}
	}
	// A card not yet identified matches no ICCID pattern but "*".
	unident := Card{Agent: "lab-pi1", ATR: "3b00"}
	if (Rule{ICCID: "89*"}).Match(unident) || !(Rule{ICCID: "*"}).Match(unident) {
		t.Error("unidentified card matching wrong")
	}
	if (Rules{}).Match(c) || !(Rules{{Agent: "x"}, {ICCID: "89*"}}).Match(c) {
		t.Error("Rules.Match wrong")
	}
	if (Rule{}).Validate() == nil || (Rule{Agent: "ok"}).Validate() != nil || (Rule{EID: "\x01"}).Validate() == nil {
		t.Error("Validate wrong")
	}
}

func TestClientKey(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.7:4242":             "192.0.2.7",
		"[2001:db8:1:2:3:4:5:6]:1":   "2001:db8:1:2::/64",
		"[2001:db8:1:2:ff::1]:9":     "2001:db8:1:2::/64",
		"[::ffff:192.0.2.7]:1":       "192.0.2.7",
		"[fe80::1%eth0]:80":          "fe80::/64",
		"pipe":                       "pipe",
		"not an address:12":          "not an address",
		"[::1]:4220":                 "::/64",
		"127.0.0.1:5":                "127.0.0.1",
		"198.51.100.1:not-a-port-42": "198.51.100.1",
	} {
		if got := ClientKey(in); got != want {
			t.Errorf("ClientKey(%q) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[string]bool{"127.0.0.1:1": true, "127.8.9.1:1": true, "[::1]:2": true, "[::ffff:127.0.0.1]:3": true, "192.0.2.1:1": false, "pipe": false} {
		if got := IsLoopback(in); got != want {
			t.Errorf("IsLoopback(%q) = %v", in, got)
		}
	}
}

func TestThrottle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		th := NewThrottle(3, 10*time.Second)
		if _, ok := th.Check("a"); !ok {
			t.Fatal("fresh key blocked")
		}
		logs := 0
		for i := range 3 {
			if _, ok := th.Check("a"); !ok {
				t.Fatalf("blocked after %d failures", i)
			}
			if l, _ := th.Fail("a"); l {
				logs++
			}
		}
		if logs != 1 {
			t.Errorf("%d log lines for 3 failures in a row, want 1", logs)
		}
		wait, ok := th.Check("a")
		if ok || wait != 10*time.Second {
			t.Fatalf("after 3 failures: wait %v ok %v, want 10s blocked", wait, ok)
		}
		if _, ok := th.Check("b"); !ok {
			t.Fatal("another key blocked")
		}
		time.Sleep(wait)
		if _, ok := th.Check("a"); !ok {
			t.Fatal("still blocked after the wait")
		}
		th.Fail("a")
		if _, ok := th.Check("a"); ok {
			t.Fatal("one failure after the wait did not block again")
		}
		time.Sleep(DefaultLogEvery)
		if l, n := th.Fail("a"); !l || n != 3 {
			t.Fatalf("after a minute: log %v with %d suppressed, want true 3", l, n)
		}
	})
}

// The throttle remembers at most maxKeys keys, whatever a scan does.
func TestThrottleBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		th := NewThrottle(2, time.Second)
		th.maxKeys = 50
		for i := range 500 {
			th.Fail(strings.Repeat("k", i%7) + string(rune('A'+i%26)) + time.Duration(i).String())
		}
		if n := th.Len(); n > 50 {
			t.Fatalf("%d keys remembered, want at most 50", n)
		}
		time.Sleep(time.Hour) // everybody recovered
		th.Fail("new")
		if n := th.Len(); n > 50 {
			t.Fatalf("%d keys", n)
		}
	})
}

func FuzzGlob(f *testing.F) {
	for _, tc := range globCases {
		f.Add(tc.pattern, tc.s)
	}
	f.Fuzz(func(t *testing.T, pattern, s string) {
		got := Glob(pattern, s)
		if !Glob("*", s) {
			t.Fatalf("* does not match %q", s)
		}
		if utf8.ValidString(pattern) && utf8.ValidString(s) && !strings.ContainsAny(pattern, `*?\`) {
			if want := strings.ToLower(pattern) == strings.ToLower(s); got != want {
				t.Fatalf("literal pattern %q vs %q: %v", pattern, s, got)
			}
			if !Glob(pattern+"*", pattern+s) {
				t.Fatalf("prefix pattern %q* does not match %q", pattern, pattern+s)
			}
		}
		_ = ValidPattern(pattern)
	})
}

func FuzzFromRequest(f *testing.F) {
	for _, s := range []string{"", basic("a", "b"), "Bearer x", "Basic !!", "Digest", "basic " + strings.Repeat("A", 700)} {
		f.Add(s, "")
		f.Add("", s)
	}
	f.Fuzz(func(t *testing.T, authz, token string) {
		h := http.Header{}
		if authz != "" {
			h.Set("Authorization", authz)
		}
		if token != "" {
			h.Set(TokenHeader, token)
		}
		c, err := FromRequest(&http.Request{Header: h})
		if err != nil {
			return
		}
		if (authz != "" || token != "") != (c.Scheme != SchemeNone) {
			t.Fatalf("%q %q gave %+v", authz, token, c)
		}
		if c.Scheme != SchemeNone && (c.Secret == "" || len(c.Secret) > maxCredentialLen || !printable(c.Name)) {
			t.Fatalf("unchecked credentials %+v", c)
		}
	})
}

func FuzzParseTokenHash(f *testing.F) {
	f.Add(HashToken("x").String())
	f.Add("sha256:zz")
	f.Fuzz(func(t *testing.T, s string) {
		h, err := ParseTokenHash(s)
		if err == nil && h.String() != strings.ToLower(s) {
			t.Fatalf("%q round-trips to %q", s, h.String())
		}
	})
}
