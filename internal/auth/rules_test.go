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

// failOnce begins an attempt by key and ends it as a failure.
func failOnce(t *testing.T, th *Throttle, key string) (logIt bool, suppressed int) {
	t.Helper()
	a, _, ok := th.Begin(key)
	if !ok {
		t.Fatalf("key %q blocked", key)
	}
	return a.End(true)
}

// admitted reports whether key may begin an attempt now (and ends it
// without a failure).
func admitted(th *Throttle, key string) (time.Duration, bool) {
	a, wait, ok := th.Begin(key)
	if ok {
		a.End(false)
	}
	return wait, ok
}

func TestThrottle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		th := NewThrottle(3, 10*time.Second)
		logs := 0
		for range 3 {
			if l, _ := failOnce(t, th, "a"); l {
				logs++
			}
		}
		if logs != 1 {
			t.Errorf("%d log lines for 3 failures in a row, want 1", logs)
		}
		wait, ok := admitted(th, "a")
		if ok || wait != 10*time.Second {
			t.Fatalf("after 3 failures: wait %v ok %v, want 10s blocked", wait, ok)
		}
		if _, ok := admitted(th, "b"); !ok {
			t.Fatal("another key blocked")
		}
		time.Sleep(wait)
		failOnce(t, th, "a")
		if _, ok := admitted(th, "a"); ok {
			t.Fatal("one failure after the wait did not block again")
		}
		time.Sleep(DefaultLogEvery)
		if l, n := failOnce(t, th, "a"); !l || n != 3 {
			t.Fatalf("after a minute: log %v with %d suppressed, want true 3", l, n)
		}
	})
}

// Attempts in flight hold their share of the allowance: a client sending
// many wrong passwords at once gets as many checked as it has failures
// left, the others are refused before any hashing. Issue 10, point 3.
func TestThrottleConcurrentAttempts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		th := NewThrottle(3, 10*time.Second)
		var inFlight []Attempt
		for range 100 {
			if a, _, ok := th.Begin("a"); ok {
				inFlight = append(inFlight, a)
			}
		}
		if len(inFlight) != 3 {
			t.Fatalf("%d of 100 simultaneous attempts admitted, want 3", len(inFlight))
		}
		if _, ok := admitted(th, "b"); !ok {
			t.Fatal("another key blocked")
		}
		// One succeeds: its reservation is given back.
		inFlight[0].End(false)
		a, _, ok := th.Begin("a")
		if !ok {
			t.Fatal("a successful attempt did not give its reservation back")
		}
		for _, a := range append(inFlight[1:], a) {
			a.End(true)
		}
		if _, ok := admitted(th, "a"); ok {
			t.Fatal("not blocked after 3 failures")
		}
		// Keys without failures are not remembered.
		time.Sleep(time.Hour)
		admitted(th, "c")
		if n := th.Len(); n != 1 { // "a", recovered but with a log time
			t.Errorf("%d keys remembered, want 1", n)
		}
	})
}

// The throttle remembers at most maxKeys keys, whatever a scan does.
func TestThrottleBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		th := NewThrottle(2, time.Second)
		th.maxKeys = 50
		for i := range 500 {
			failOnce(t, th, strings.Repeat("k", i%7)+string(rune('A'+i%26))+time.Duration(i).String())
		}
		if n := th.Len(); n > 50 {
			t.Fatalf("%d keys remembered, want at most 50", n)
		}
		time.Sleep(time.Hour) // everybody recovered
		failOnce(t, th, "new")
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
			//lint:ignore SA6005 Glob folds case with strings.ToLower, so the oracle must too (EqualFold folds some runes otherwise)
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

// Only a trusted proxy's X-Forwarded-For is believed, and only the part
// no client could have written: the rightmost address that is not itself
// a trusted proxy. Issue 10, point 4.
func TestProxiesClientAddr(t *testing.T) {
	ps, err := ParseProxies([]string{"127.0.0.1", "::1", "10.0.0.0/8"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		remote string
		xff    []string
		want   string
	}{
		{"127.0.0.1:5000", nil, "127.0.0.1:5000"},                                              // a proxy that says nothing
		{"127.0.0.1:5000", []string{"203.0.113.7"}, "203.0.113.7:0"},                           // nginx's $proxy_add_x_forwarded_for
		{"[::1]:5000", []string{"2001:db8::5"}, "[2001:db8::5]:0"},                             // IPv6
		{"127.0.0.1:5000", []string{"198.51.100.1, 203.0.113.7"}, "203.0.113.7:0"},             // the client wrote the first one
		{"127.0.0.1:5000", []string{"198.51.100.1", "203.0.113.7, 10.1.1.1"}, "203.0.113.7:0"}, // two proxies
		{"127.0.0.1:5000", []string{"203.0.113.7:4444"}, "203.0.113.7:0"},                      // with a port
		{"127.0.0.1:5000", []string{"::ffff:203.0.113.7"}, "203.0.113.7:0"},                    // v4-mapped
		{"127.0.0.1:5000", []string{"garbage"}, "127.0.0.1:5000"},                              // not believed
		{"127.0.0.1:5000", []string{"10.1.1.1"}, "127.0.0.1:5000"},                             // only proxies
		{"192.0.2.9:5000", []string{"203.0.113.7"}, "192.0.2.9:5000"},                          // not a trusted proxy: ignored
	} {
		r, _ := http.NewRequest("GET", "/", nil)
		r.RemoteAddr = tc.remote
		for _, v := range tc.xff {
			r.Header.Add(ForwardedHeader, v)
		}
		if got := ps.ClientAddr(r); got != tc.want {
			t.Errorf("%s with %q: %s, want %s", tc.remote, tc.xff, got, tc.want)
		}
	}
	r, _ := http.NewRequest("GET", "/", nil)
	r.RemoteAddr = "127.0.0.1:1"
	r.Header.Set(ForwardedHeader, "203.0.113.7")
	if got := Proxies(nil).ClientAddr(r); got != r.RemoteAddr {
		t.Errorf("no trusted proxies: %s", got)
	}
	if _, err := ParseProxies([]string{"not-an-address"}); err == nil {
		t.Error("ParseProxies accepted garbage")
	}
}
