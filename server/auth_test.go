package server

import (
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/crypto/bcrypt"

	"github.com/wsrc-go/wsrc/internal/auth"
	"github.com/wsrc-go/wsrc/internal/testenv/wstest"
)

// Tokens of the test accounts (fixed, so failures are reproducible).
const (
	tokAlice = "wsrc_alice-token-000000000000000000000000000000"
	tokRoot  = "wsrc_root-token-0000000000000000000000000000000"
	tokPi1   = "wsrc_pi1-token-00000000000000000000000000000000"
	tokPi2   = "wsrc_pi2-token-00000000000000000000000000000000"
)

// testAuth returns a store with users alice (password "alice-pw" or her
// token; cards with ICCID 8949* or of agent pi2), root (admin, token) and
// agents pi1 (any card) and pi2 (ICCIDs 8901* only).
func testAuth(t *testing.T) *auth.Store {
	t.Helper()
	pw, err := bcrypt.GenerateFromPassword([]byte("alice-pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	s, err := auth.NewStore([]auth.User{
		{Name: "alice", PasswordHash: string(pw), TokenHashes: []auth.TokenHash{auth.HashToken(tokAlice)},
			Cards: auth.Rules{{ICCID: "8949*"}, {Agent: "pi2"}}},
		{Name: "root", TokenHashes: []auth.TokenHash{auth.HashToken(tokRoot)}, Admin: true},
	}, []auth.Agent{
		{Name: "pi1", TokenHashes: []auth.TokenHash{auth.HashToken(tokPi1)}, AllCards: true},
		{Name: "pi2", TokenHashes: []auth.TokenHash{auth.HashToken(tokPi2)}, Cards: auth.Rules{{ICCID: "8901*"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// withHeader adds a request header before h sees the request: the
// in-memory pipe dialer sends none of its own.
func withHeader(h http.Handler, kv ...string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i+1 < len(kv); i += 2 {
			r.Header.Add(kv[i], kv[i+1])
		}
		h.ServeHTTP(w, r)
	})
}

func basicAuth(name, secret string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(name+":"+secret))
}

func bearer(tok string) string { return "Bearer " + tok }

// authUser connects a user with an Authorization header and says hello.
func (e *env) authUser(authz string) *wstest.Peer {
	e.t.Helper()
	u := e.pipe(withHeader(e.srv.UserHandler(), "Authorization", authz), "")
	u.Send(`{"msg_type": "hello", "client_type": "user"}`)
	expectJSON(e.t, u.Recv(), `{"msg_type": "hello_ack"}`)
	return u
}

// authCard connects a card agent with the given header.
func (e *env) authCard(remote string, kv ...string) *wstest.Peer {
	e.t.Helper()
	return e.pipe(withHeader(e.srv.CardHandler(), kv...), remote)
}

// uiccHello plays a card agent's hello and identification of a UICC with
// the ICCID in efICCID, as agent/reader.
func uiccHello(t *testing.T, c *wstest.Peer, atr, agent, reader, efICCID string) {
	t.Helper()
	c.Send(`{"msg_type":"hello","client_type":"card","atr":"` + atr + `","agent":"` + agent + `","reader":"` + reader + `"}`)
	expectJSON(t, c.Recv(), `{"msg_type": "hello_ack"}`)
	expectCAPDU(t, c, cmdSelectISDR)
	uiccIdentify(t, c, efICCID)
}

// uiccIdentify answers the identification after SELECT ISD-R as a UICC
// without ISD-R whose EF.ICCID holds efICCID.
func uiccIdentify(t *testing.T, c *wstest.Peer, efICCID string) {
	t.Helper()
	c.Send(rapdu6a82)
	for _, cmd := range []string{cmdSelectMF, cmdSelectICC} {
		expectCAPDU(t, c, cmd)
		c.Send(`{"response": "", "sw": "9000", "msg_type": "r_apdu"}`)
	}
	expectCAPDU(t, c, cmdReadICCID)
	c.Send(`{"response": "` + efICCID + `", "sw": "9000", "msg_type": "r_apdu"}`)
	identifyExtensions(t, c, efICCID, false)
}

// Upgrade requests without valid credentials get 401 with a challenge
// and never reach hello; the right ones of every kind get in.
func TestAuthAtUpgrade(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &recorder{}
		e := newEnv(t, Config{Auth: testAuth(t), Observer: rec})
		for _, tc := range []struct {
			name string
			h    http.Handler
			kv   []string
			want RefusalReason
		}{
			{"user without credentials", e.srv.UserHandler(), nil, RefusedNoCredentials},
			{"user wrong password", e.srv.UserHandler(), []string{"Authorization", basicAuth("alice", "nope")}, RefusedBadCredential},
			{"user with an agent token", e.srv.UserHandler(), []string{"Authorization", bearer(tokPi1)}, RefusedBadCredential},
			{"user malformed", e.srv.UserHandler(), []string{"Authorization", "Basic !!"}, RefusedBadCredential},
			{"agent without token", e.srv.CardHandler(), nil, RefusedNoCredentials},
			{"agent with a user token", e.srv.CardHandler(), []string{"X-WSRC-Token", tokAlice}, RefusedBadCredential},
			{"agent with another agent's name", e.srv.CardHandler(), []string{"Authorization", basicAuth("pi2", tokPi1)}, RefusedBadCredential},
		} {
			func() {
				req := httptest.NewRequest("GET", "/", nil)
				req.RemoteAddr = "192.0.2.10:1234"
				req.Header.Set("Connection", "Upgrade")
				req.Header.Set("Upgrade", "websocket")
				req.Header.Set("Sec-Websocket-Version", "13")
				req.Header.Set("Sec-Websocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
				for i := 0; i+1 < len(tc.kv); i += 2 {
					req.Header.Set(tc.kv[i], tc.kv[i+1])
				}
				w := httptest.NewRecorder()
				tc.h.ServeHTTP(w, req)
				if w.Code != http.StatusUnauthorized {
					t.Fatalf("%s: status %d, want 401", tc.name, w.Code)
				}
				ch := w.Header().Values("WWW-Authenticate")
				if len(ch) != 2 || !strings.HasPrefix(ch[0], "Basic realm=") || !strings.HasPrefix(ch[1], "Bearer realm=") {
					t.Fatalf("%s: WWW-Authenticate %q", tc.name, ch)
				}
				if !strings.Contains(w.Body.String(), "authentication required") {
					t.Fatalf("%s: body %q", tc.name, w.Body.String())
				}
				if got := rec.last(); got != string(tc.want) {
					t.Fatalf("%s: refusal %q, want %q", tc.name, got, tc.want)
				}
			}()
		}
		if n := rec.count("connected"); n != 0 {
			t.Fatalf("%d connections reached the server", n)
		}
		// The right credentials, in every form.
		for _, authz := range []string{basicAuth("alice", "alice-pw"), basicAuth("alice", tokAlice), basicAuth("", tokAlice), bearer(tokRoot)} {
			u := e.authUser(authz)
			u.Close(websocket.CloseNormalClosure, "")
		}
		c := e.authCard("", "X-WSRC-Token", tokPi1)
		helloCard(t, c, "3b00")
		c = e.authCard("", "Authorization", basicAuth("pi1", tokPi1))
		helloCard(t, c, "3b01")
	})
}

// An address that keeps failing gets 429 with Retry-After, even with good
// credentials, until its allowance is back; other addresses are not
// affected. The failures are logged, but not every one.
func TestAuthThrottle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{Auth: testAuth(t), AuthFailureBurst: 3, AuthFailurePer: 20 * time.Second})
		try := func(remote, authz string) *httptest.ResponseRecorder {
			req := httptest.NewRequest("GET", "/", nil)
			req.RemoteAddr = remote
			req.Header.Set("Authorization", authz)
			w := httptest.NewRecorder()
			e.srv.UserHandler().ServeHTTP(w, req)
			return w
		}
		for i := range 3 {
			if w := try("198.51.100.7:1000", basicAuth("alice", "guess")); w.Code != http.StatusUnauthorized {
				t.Fatalf("failure %d: status %d", i, w.Code)
			}
		}
		w := try("198.51.100.7:1001", basicAuth("alice", "alice-pw"))
		if w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") != "20" {
			t.Fatalf("after 3 failures: %d Retry-After %q, want 429 and 20", w.Code, w.Header().Get("Retry-After"))
		}
		// Another address is fine (it gets 400: not a WebSocket request).
		if w := try("198.51.100.8:1000", basicAuth("alice", "alice-pw")); w.Code != http.StatusBadRequest {
			t.Fatalf("other address: %d", w.Code)
		}
		// So is the same IPv4 address... no: ports do not matter.
		time.Sleep(20 * time.Second)
		if w := try("198.51.100.7:1002", basicAuth("alice", "alice-pw")); w.Code != http.StatusBadRequest {
			t.Fatalf("after the wait: %d, want 400 (authenticated, but not an upgrade)", w.Code)
		}
		// IPv6 clients are counted by /64.
		for i := range 3 {
			try("[2001:db8::"+string(rune('1'+i))+"]:1", bearer("wsrc_wrong"))
		}
		if w := try("[2001:db8::ff]:1", bearer(tokRoot)); w.Code != http.StatusTooManyRequests {
			t.Fatalf("same /64: %d, want 429", w.Code)
		}
	})
}

// list_cards shows each user only the cards its rules allow, and the
// agents' addresses only to admins; select_card cannot reach other cards
// (it answers as if they were not there).
func TestCardAccessRules(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{Auth: testAuth(t)})
		c1 := e.authCard("192.0.2.1:5001", "Authorization", bearer(tokPi1))
		uiccHello(t, c1, "3b01", "", "Reader A", "989444000000115513f4") // 8949440000001155314
		expectJSON(t, c1.Recv(), stateReady)
		c2 := e.authCard("192.0.2.1:5002", "Authorization", bearer(tokPi1))
		uiccHello(t, c2, "3b02", "", "Reader B", "980000000000000000f0") // 8900000000000000000
		expectJSON(t, c2.Recv(), stateReady)
		c3 := e.authCard("192.0.2.2:5003", "Authorization", bearer(tokPi2))
		uiccHello(t, c3, "3b03", "pi2-hostname", "Reader C", "981000000000000000f0") // 8901000000000000000
		expectJSON(t, c3.Recv(), stateReady)

		alice := e.authUser(basicAuth("alice", "alice-pw"))
		alice.Send(`{"msg_type": "list_cards"}`)
		expectJSON(t, alice.Recv(), `{"cards": [
			{"remote_addr": ["0.0.0.0", 0], "identities": {"ATR": "3b01", "ICCID": "8949440000001155314"}, "state": "ready", "agent": "pi1", "reader": "Reader A"},
			{"remote_addr": ["0.0.0.0", 0], "identities": {"ATR": "3b03", "ICCID": "8901000000000000000"}, "state": "ready", "agent": "pi2", "reader": "Reader C"}
		], "msg_type": "list_cards_ack"}`)
		for _, sel := range []string{`"id_type": "atr", "id_str": "3b02"`, `"id_type": "iccid", "id_str": "8900000000000000000"`} {
			alice.Send(`{"msg_type": "select_card", ` + sel + `}`)
			expectError(t, alice.Recv(), "no card with", "is connected")
		}
		root := e.authUser(bearer(tokRoot))
		root.Send(`{"msg_type": "list_cards"}`)
		got := root.Recv()
		for _, want := range []string{`["192.0.2.1", 5001]`, `["192.0.2.1", 5002]`, `["192.0.2.2", 5003]`} {
			if !strings.Contains(got, want) {
				t.Fatalf("admin list lacks %s: %s", want, got)
			}
		}
		selectCard(t, alice, "iccid", "8949440000001155314", `{"ATR": "3b01", "ICCID": "8949440000001155314"}`)
		expectJSON(t, c1.Recv(), stateAssoc)
		// The admin sees it in use, and may not take it.
		root.Send(`{"msg_type": "select_card", "id_type": "atr", "id_str": "3b01"}`)
		expectError(t, root.Recv(), "in use by another user")
		selectCard(t, root, "atr", "3b02", `{"ATR": "3b02", "ICCID": "8900000000000000000"}`)
		expectJSON(t, c2.Recv(), stateAssoc)
	})
}

// An agent may register only the cards its rules allow: another card is
// refused after identification, with a reason, and never listed.
func TestAgentCardRules(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{Auth: testAuth(t)})
		c := e.authCard("", "Authorization", bearer(tokPi2))
		uiccHello(t, c, "3b04", "", "R", "989444000000115513f4")
		expectError(t, c.Recv(), `card not allowed: agent "pi2" may not register the card`, "8949440000001155314")
		expectClosed(t, c, websocket.ClosePolicyViolation, "card not allowed")
		synctest.Wait()
		if n := len(e.srv.Cards()); n != 0 {
			t.Fatalf("%d cards listed", n)
		}
	})
}

// A new hello for the same agent and reader replaces the old connection
// at once: the old one is closed with a reason, its user learns at its
// next request, and the new one is the card.
func TestAgentReplacesStaleSession(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &recorder{}
		e := newEnv(t, Config{Auth: testAuth(t), Observer: rec})
		old := e.authCard("192.0.2.1:6000", "Authorization", bearer(tokPi1))
		uiccHello(t, old, "3b05", "", "Reader A", "989444000000115513f4")
		expectJSON(t, old.Recv(), stateReady)
		u := e.authUser(bearer(tokRoot))
		selectCard(t, u, "atr", "3b05", `{"ATR": "3b05", "ICCID": "8949440000001155314"}`)
		expectJSON(t, old.Recv(), stateAssoc)
		// Another reader of the same agent is someone else.
		other := e.authCard("192.0.2.1:6001", "Authorization", bearer(tokPi1))
		helloCardAs(t, other, "3b06", "Reader B")
		identifyATROnly(t, other)

		start := time.Now()
		fresh := e.authCard("192.0.2.1:6002", "Authorization", bearer(tokPi1))
		helloCardAs(t, fresh, "3b05", "Reader A")
		expectClosed(t, old, websocket.ClosePolicyViolation, "replaced by a new connection from the same agent and reader")
		if d := time.Since(start); d != 0 {
			t.Errorf("replaced after %v, want at once", d)
		}
		u.Send(`{"msg_type": "c_apdu", "command": "00b0000000"}`)
		expectError(t, u.Recv(), "card disconnected: replaced by a new connection from the same agent and reader")
		identifyATROnly(t, fresh)
		u.Send(`{"msg_type": "list_cards"}`)
		got := u.Recv()
		if strings.Count(got, `"ATR"`) != 2 || !strings.Contains(got, `["192.0.2.1", 6002]`) || strings.Contains(got, "6000") {
			t.Fatalf("list after the replacement: %s", got)
		}
		selectCard(t, u, "atr", "3b05", `{"ATR": "3b05"}`)
		expectJSON(t, fresh.Recv(), stateAssoc)
		synctest.Wait()
		if got := rec.find("disconnected card 192.0.2.1:6000"); !strings.Contains(got, "replaced") {
			t.Errorf("observer: %q", got)
		}
	})
}

// helloCardAs says hello as agent "x" (replaced by the authenticated
// name) from reader and expects the identification to start.
func helloCardAs(t *testing.T, c *wstest.Peer, atr, reader string) {
	t.Helper()
	c.Send(`{"msg_type":"hello","client_type":"card","atr":"` + atr + `","agent":"x","reader":"` + reader + `"}`)
	expectJSON(t, c.Recv(), `{"msg_type": "hello_ack"}`)
	expectCAPDU(t, c, cmdSelectISDR)
}

// Without authentication the agent's own name counts; without an agent
// name or reader there is nothing to replace.
func TestReplaceOpenPort(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{})
		a := e.card("")
		a.Send(`{"msg_type":"hello","client_type":"card","atr":"3b07","agent":"host","reader":"R"}`)
		expectJSON(t, a.Recv(), `{"msg_type": "hello_ack"}`)
		expectCAPDU(t, a, cmdSelectISDR)
		anon1 := e.atrCard("3b08")
		anon2 := e.atrCard("3b08")
		b := e.card("")
		b.Send(`{"msg_type":"hello","client_type":"card","atr":"3b07","agent":"host","reader":"R"}`)
		expectJSON(t, b.Recv(), `{"msg_type": "hello_ack"}`)
		expectClosed(t, a, websocket.ClosePolicyViolation, "replaced")
		synctest.Wait()
		if n := len(e.srv.Cards()); n != 3 {
			t.Fatalf("%d cards, want 3 (b and both anonymous)", n)
		}
		_, _ = anon1, anon2
	})
}

// 100 wrong passwords sent at once from one address: only as many are
// checked as the address has failures left, the rest get 429 at once.
// Issue 10, point 3.
func TestAuthThrottleConcurrent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := &slowAuth{Store: testAuth(t), gate: make(chan struct{})}
		e := newEnv(t, Config{Auth: store, AuthFailureBurst: 10})
		codes := make(chan int, 100)
		for range 100 {
			go func() {
				req := httptest.NewRequest("GET", "/", nil)
				req.RemoteAddr = "198.51.100.7:1000"
				req.Header.Set("Authorization", basicAuth("alice", "guess"))
				w := httptest.NewRecorder()
				e.srv.UserHandler().ServeHTTP(w, req)
				codes <- w.Code
			}()
		}
		synctest.Wait() // every attempt is checked or refused
		close(store.gate)
		n := map[int]int{}
		for range 100 {
			n[<-codes]++
		}
		if n[http.StatusUnauthorized] != 10 || n[http.StatusTooManyRequests] != 90 {
			t.Fatalf("statuses %v, want 10 × 401 and 90 × 429", n)
		}
		if got := store.checked.Load(); got != 10 {
			t.Fatalf("%d passwords checked, want 10", got)
		}
	})
}

// slowAuth holds every check until gate closes, as bcrypt takes its
// time, and counts the checks.
type slowAuth struct {
	*auth.Store
	gate    chan struct{}
	checked atomic.Int32
}

func (a *slowAuth) UserRequest(r *http.Request) (*auth.Principal, error) {
	a.checked.Add(1)
	<-a.gate
	return a.Store.UserRequest(r)
}

// Behind a trusted reverse proxy each client is throttled (and limited)
// on its own, by the address the proxy names; agents are not locked out
// by users' failures. Without the proxy trusted, its clients share its
// address. Issue 10, point 4.
func TestAuthThrottleBehindProxy(t *testing.T) {
	for _, trusted := range []bool{true, false} {
		t.Run(map[bool]string{true: "trusted", false: "untrusted"}[trusted], func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				cfg := Config{Auth: testAuth(t), AuthFailureBurst: 3}
				if trusted {
					cfg.TrustedProxies, _ = auth.ParseProxies([]string{"127.0.0.1"})
				}
				e := newEnv(t, cfg)
				try := func(h http.Handler, client, authz string) int {
					req := httptest.NewRequest("GET", "/", nil)
					req.RemoteAddr = "127.0.0.1:40000" // the proxy
					req.Header.Set(auth.ForwardedHeader, client)
					req.Header.Set("Authorization", authz)
					w := httptest.NewRecorder()
					h.ServeHTTP(w, req)
					return w.Code
				}
				for range 3 {
					try(e.srv.UserHandler(), "203.0.113.66", basicAuth("alice", "guess"))
				}
				if got := try(e.srv.UserHandler(), "203.0.113.66", basicAuth("alice", "alice-pw")); got != http.StatusTooManyRequests {
					t.Fatalf("the failing client: %d, want 429", got)
				}
				other := try(e.srv.UserHandler(), "203.0.113.7", basicAuth("alice", "alice-pw"))
				want := http.StatusBadRequest // authenticated (not an upgrade)
				if !trusted {
					want = http.StatusTooManyRequests // everyone is the proxy
				}
				if other != want {
					t.Fatalf("another client behind the proxy: %d, want %d", other, want)
				}
				// The card port has a throttle of its own.
				if got := try(e.srv.CardHandler(), "203.0.113.66", bearer(tokPi1)); got != http.StatusBadRequest {
					t.Fatalf("an agent's valid token from the same address: %d, want 400 (authenticated)", got)
				}
			})
		})
	}
}
