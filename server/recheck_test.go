package server

import (
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"

	"github.com/gorilla/websocket"
	"golang.org/x/crypto/bcrypt"

	"github.com/wsrc-go/wsrc/internal/auth"
	"github.com/wsrc-go/wsrc/internal/testenv/wstest"
)

// swapAuth is the Authenticator of the recheck tests: accounts that a
// test replaces, as wsrc-server's reload does, then calls Recheck.
type swapAuth struct {
	cur atomic.Pointer[auth.Store]
	// hold, when set, runs inside UserRequest after the accounts were
	// read: a test holds an upgrade there while it changes them.
	hold func()
}

func (a *swapAuth) UserRequest(r *http.Request) (*auth.Principal, error) {
	s := a.cur.Load()
	if a.hold != nil {
		a.hold()
	}
	return s.UserRequest(r)
}

func (a *swapAuth) AgentRequest(r *http.Request) (*auth.Principal, error) {
	return a.cur.Load().AgentRequest(r)
}

func (a *swapAuth) RecheckUser(p *auth.Principal) (*auth.Principal, error) {
	return a.cur.Load().RecheckUser(p)
}

func (a *swapAuth) RecheckAgent(p *auth.Principal) (*auth.Principal, error) {
	return a.cur.Load().RecheckAgent(p)
}

// accounts are testAuth's accounts, for a test to change and install.
type accounts struct {
	users  []auth.User
	agents []auth.Agent
}

func newAccounts(t *testing.T) *accounts {
	t.Helper()
	pw, err := bcrypt.GenerateFromPassword([]byte("alice-pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return &accounts{
		users: []auth.User{
			{Name: "alice", PasswordHash: string(pw), TokenHashes: []auth.TokenHash{auth.HashToken(tokAlice)},
				Cards: auth.Rules{{ICCID: "8949*"}, {Agent: "pi2"}}},
			{Name: "root", TokenHashes: []auth.TokenHash{auth.HashToken(tokRoot)}, Admin: true},
		},
		agents: []auth.Agent{
			{Name: "pi1", TokenHashes: []auth.TokenHash{auth.HashToken(tokPi1)}, AllCards: true},
			{Name: "pi2", TokenHashes: []auth.TokenHash{auth.HashToken(tokPi2)}, Cards: auth.Rules{{ICCID: "8901*"}}},
		},
	}
}

// user returns the user account called name.
func (a *accounts) user(t *testing.T, name string) *auth.User {
	for i := range a.users {
		if a.users[i].Name == name {
			return &a.users[i]
		}
	}
	t.Fatalf("no user %q", name)
	return nil
}

// agent returns the agent account called name.
func (a *accounts) agent(t *testing.T, name string) *auth.Agent {
	for i := range a.agents {
		if a.agents[i].Name == name {
			return &a.agents[i]
		}
	}
	t.Fatalf("no agent %q", name)
	return nil
}

// store builds a Store of the accounts as they are now (copies: the
// tests change the accounts later, and a Store keeps what it is given).
func (a *accounts) store(t *testing.T) *auth.Store {
	t.Helper()
	s, err := auth.NewStore(slices.Clone(a.users), slices.Clone(a.agents))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// recheckEnv is a server whose accounts a test changes.
type recheckEnv struct {
	*env
	auth *swapAuth
	acc  *accounts
	rec  *recorder
}

func newRecheckEnv(t *testing.T) *recheckEnv {
	t.Helper()
	r := &recheckEnv{auth: &swapAuth{}, acc: newAccounts(t), rec: &recorder{}}
	r.auth.cur.Store(r.acc.store(t))
	r.env = newEnv(t, Config{Auth: r.auth, Observer: r.rec})
	return r
}

// reload installs the accounts as changed and rechecks the open
// connections, expecting want.
func (r *recheckEnv) reload(want RecheckResult) {
	r.t.Helper()
	r.auth.cur.Store(r.acc.store(r.t))
	r.recheck(want)
}

func (r *recheckEnv) recheck(want RecheckResult) {
	r.t.Helper()
	got, err := r.srv.Recheck()
	if err != nil || got != want {
		r.t.Fatalf("Recheck: %+v, %v; want %+v", got, err, want)
	}
}

// agentCard connects agent tok's card agent from remote with a UICC
// (ATR atr, EF.ICCID efICCID) in reader and plays its identification.
func (e *env) agentCard(tok, remote, atr, reader, efICCID string) *wstest.Peer {
	e.t.Helper()
	c := e.authCard(remote, "Authorization", bearer(tok))
	uiccHello(e.t, c, atr, "", reader, efICCID)
	expectJSON(e.t, c.Recv(), stateReady)
	return c
}

// The test cards: pi1's card 3b01 (ICCID 8949…, alice may use it by
// ICCID) and pi2's card 3b03 (ICCID 8901…, alice may use it by agent).
const (
	efICCID8949 = "989444000000115513f4" // 8949440000001155314
	efICCID8901 = "981000000000000000f0" // 8901000000000000000
)

// twoCards connects pi1's card 3b01 (from 192.0.2.1:5001) and pi2's card
// 3b03 (from 192.0.2.2:5003).
func (r *recheckEnv) twoCards() (c1, c3 *wstest.Peer) {
	r.t.Helper()
	return r.agentCard(tokPi1, "192.0.2.1:5001", "3b01", "A", efICCID8949), r.agentCard(tokPi2, "192.0.2.2:5003", "3b03", "C", efICCID8901)
}

// take selects test card atr (3b01 or 3b03) for user u and expects its
// agent c to hear of it.
func take(t *testing.T, u, c *wstest.Peer, atr string) {
	t.Helper()
	ids := map[string]string{"3b01": `{"ATR": "3b01", "ICCID": "8949440000001155314"}`, "3b03": `{"ATR": "3b03", "ICCID": "8901000000000000000"}`}[atr]
	selectCard(t, u, "atr", atr, ids)
	expectJSON(t, c.Recv(), stateAssoc)
}

// expectRevoked checks that p gets the error for revoked credentials and
// is closed with 1008.
func expectRevoked(t *testing.T, p *wstest.Peer) {
	t.Helper()
	expectError(t, p.Recv(), "credentials revoked by the server's operator")
	expectClosed(t, p, websocket.ClosePolicyViolation, "credentials revoked by the server's operator")
}

// cardList returns the ATRs of a list_cards_ack, with their states.
func cardList(t *testing.T, u *wstest.Peer) map[string]string {
	t.Helper()
	u.Send(`{"msg_type": "list_cards"}`)
	var ack struct {
		Cards []struct {
			Identities map[string]string `json:"identities"`
			State      string            `json:"state"`
		} `json:"cards"`
	}
	if err := json.Unmarshal([]byte(u.Recv()), &ack); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, c := range ack.Cards {
		out[c.Identities["ATR"]] = c.State
	}
	return out
}

// A user whose token is removed is closed mid-session with an error and
// 1008; its card is free at once for another user. Its other session,
// by password, goes on untouched.
func TestRecheckRevokedUser(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRecheckEnv(t)
		c1 := r.agentCard(tokPi1, "192.0.2.1:5001", "3b01", "A", efICCID8949)
		byToken := r.authUser(bearer(tokAlice))
		take(t, byToken, c1, "3b01")
		byPassword := r.authUser(basicAuth("alice", "alice-pw"))
		root := r.authUser(bearer(tokRoot))

		r.acc.user(t, "alice").TokenHashes = nil
		r.reload(RecheckResult{Checked: 4, Revoked: 1})
		expectRevoked(t, byToken)
		expectJSON(t, c1.Recv(), stateReady)
		take(t, root, c1, "3b01")
		if got := cardList(t, byPassword); got["3b01"] != "associated" {
			t.Fatalf("alice by password sees %v", got)
		}
		synctest.Wait()
		if n := r.rec.count("revoked"); n != 1 {
			t.Errorf("%d revocations observed", n)
		}
		if got := r.rec.find("disconnected user"); !strings.Contains(got, "alice: credentials revoked") {
			t.Errorf("observer: %q", got)
		}
	})
}

// A password that changes ends the sessions it opened; removing the
// account ends all of them.
func TestRecheckPasswordAndAccount(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRecheckEnv(t)
		byPassword := r.authUser(basicAuth("alice", "alice-pw"))
		byToken := r.authUser(basicAuth("alice", tokAlice))
		root := r.authUser(bearer(tokRoot))
		pw, err := bcrypt.GenerateFromPassword([]byte("alice-pw"), bcrypt.MinCost) // the same password, a new hash
		if err != nil {
			t.Fatal(err)
		}
		r.acc.user(t, "alice").PasswordHash = string(pw)
		r.reload(RecheckResult{Checked: 3, Revoked: 1})
		expectRevoked(t, byPassword)
		r.acc.users = r.acc.users[1:] // alice gone
		r.reload(RecheckResult{Checked: 2, Revoked: 1})
		expectRevoked(t, byToken)
		if got := cardList(t, root); len(got) != 0 {
			t.Fatalf("root: %v", got)
		}
	})
}

// Narrower rules take a user's card away: the card is free at once, the
// user's next request says why, its list follows the new rules, and it
// may select a card it may still use.
func TestRecheckRulesNarrowed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRecheckEnv(t)
		c1, c3 := r.twoCards()
		alice := r.authUser(basicAuth("alice", "alice-pw"))
		take(t, alice, c1, "3b01")
		root := r.authUser(bearer(tokRoot))

		r.acc.user(t, "alice").Cards = auth.Rules{{Agent: "pi2"}}
		r.reload(RecheckResult{Checked: 4, Withdrawn: 1})
		expectJSON(t, c1.Recv(), stateReady)
		if got := cardList(t, alice); len(got) != 1 || got["3b03"] != "ready" {
			t.Fatalf("alice's list: %v", got)
		}
		alice.Send(`{"msg_type": "c_apdu", "command": "00b0000000"}`)
		expectError(t, alice.Recv(), "access to this card was withdrawn by the server's operator")
		alice.Send(`{"msg_type": "c_apdu", "command": "00b0000000"}`)
		expectError(t, alice.Recv(), errNoCard)
		take(t, alice, c3, "3b03")
		pair{c3, alice}.roundTrip(t, "00b0000000", "01")
		take(t, root, c1, "3b01")
		synctest.Wait()
		if n := r.rec.count("card_withdrawn"); n != 1 {
			t.Errorf("%d withdrawals observed", n)
		}
	})
}

// A withdrawn card may be given up by selecting another one at once.
func TestRecheckWithdrawnThenSelect(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRecheckEnv(t)
		c1, c3 := r.twoCards()
		alice := r.authUser(basicAuth("alice", "alice-pw"))
		selectCard(t, alice, "iccid", "8949440000001155314", `{"ATR": "3b01", "ICCID": "8949440000001155314"}`)
		expectJSON(t, c1.Recv(), stateAssoc)
		r.acc.user(t, "alice").Cards = auth.Rules{{Agent: "pi2"}}
		r.reload(RecheckResult{Checked: 3, Withdrawn: 1})
		expectJSON(t, c1.Recv(), stateReady)
		// The card is no longer there as far as alice can tell.
		alice.Send(`{"msg_type": "select_card", "id_type": "atr", "id_str": "3b01"}`)
		expectError(t, alice.Recv(), "no card with ATR 3b01 is connected")
		take(t, alice, c3, "3b03")
	})
}

// An admin that loses the flag no longer sees the agents' addresses; with
// all_cards it keeps its card, without any rules it loses it.
func TestRecheckAdminRemoved(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRecheckEnv(t)
		c1 := r.agentCard(tokPi1, "192.0.2.1:5001", "3b01", "A", efICCID8949)
		root := r.authUser(bearer(tokRoot))
		root.Send(`{"msg_type": "list_cards"}`)
		if got := root.Recv(); !strings.Contains(got, `["192.0.2.1", 5001]`) {
			t.Fatalf("admin list: %s", got)
		}
		take(t, root, c1, "3b01")

		u := r.acc.user(t, "root")
		u.Admin, u.AllCards = false, true
		r.reload(RecheckResult{Checked: 2})
		root.Send(`{"msg_type": "list_cards"}`)
		if got := root.Recv(); strings.Contains(got, "192.0.2.1") || !strings.Contains(got, `["0.0.0.0", 0]`) || !strings.Contains(got, `"associated"`) {
			t.Fatalf("list after the admin flag went: %s", got)
		}
		pair{c1, root}.roundTrip(t, "00b0000000", "01")

		r.acc.user(t, "root").AllCards = false
		r.reload(RecheckResult{Checked: 2, Withdrawn: 1})
		expectJSON(t, c1.Recv(), stateReady)
		if got := cardList(t, root); len(got) != 0 {
			t.Fatalf("root without rules sees %v", got)
		}
	})
}

// A revoked card agent is closed; its card leaves the list, and its
// user is told at once when a request is in flight, else at its next.
func TestRecheckRevokedAgent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRecheckEnv(t)
		c1, c3 := r.twoCards()
		root := r.authUser(bearer(tokRoot))
		take(t, root, c1, "3b01")
		alice := r.authUser(basicAuth("alice", "alice-pw"))
		take(t, alice, c3, "3b03")
		alice.Send(`{"msg_type": "c_apdu", "command": "00b0000000"}`)
		expectCAPDU(t, c3, "00b0000000")

		r.acc.agent(t, "pi1").TokenHashes = []auth.TokenHash{auth.HashToken("wsrc_pi1-new")}
		r.acc.agents = r.acc.agents[:1] // pi2 gone
		r.reload(RecheckResult{Checked: 4, Revoked: 2})
		const gone = "card disconnected: the card agent's credentials were revoked by the server's operator"
		expectError(t, alice.Recv(), gone)
		expectRevoked(t, c1)
		expectRevoked(t, c3)
		root.Send(`{"msg_type": "c_apdu", "command": "00b0000000"}`)
		expectError(t, root.Recv(), gone)
		if got := cardList(t, root); len(got) != 0 {
			t.Fatalf("cards listed: %v", got)
		}
		alice.Send(`{"msg_type": "c_apdu", "command": "00b0000000"}`)
		expectError(t, alice.Recv(), errNoCard)
		synctest.Wait()
		if n := r.rec.count("revoked"); n != 2 {
			t.Errorf("%d revocations observed", n)
		}
	})
}

// Narrower agent rules close the card connections they no longer allow,
// like the refusal at identification; a card being identified meanwhile
// is checked against the new rules.
func TestRecheckAgentRulesNarrowed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRecheckEnv(t)
		c3 := r.agentCard(tokPi2, "", "3b03", "C", efICCID8901)
		alice := r.authUser(basicAuth("alice", "alice-pw"))
		take(t, alice, c3, "3b03")
		c4 := r.authCard("", "Authorization", bearer(tokPi2))
		helloCardAs(t, c4, "3b04", "D") // identification under way

		r.acc.agent(t, "pi2").Cards = auth.Rules{{ICCID: "8902*"}}
		r.reload(RecheckResult{Checked: 3, Refused: 1})
		expectError(t, c3.Recv(), `card not allowed: agent "pi2" may no longer use the card`, "8901000000000000000")
		expectClosed(t, c3, websocket.ClosePolicyViolation, "card not allowed for this agent")
		alice.Send(`{"msg_type": "c_apdu", "command": "00b0000000"}`)
		expectError(t, alice.Recv(), "card disconnected: its agent may no longer use this card")

		uiccIdentify(t, c4, "981000000000000001f0")
		expectError(t, c4.Recv(), `card not allowed: agent "pi2" may not register the card`)
		expectClosed(t, c4, websocket.ClosePolicyViolation, "card not allowed for this agent")
		synctest.Wait()
		if n := len(r.srv.Cards()); n != 0 {
			t.Fatalf("%d cards listed", n)
		}
		if n := r.rec.count("card_not_allowed"); n != 2 {
			t.Errorf("%d refusals observed", n)
		}
	})
}

// Anonymous peers of an open port are closed once the port has
// accounts; the other port stays open until it has some too.
func TestRecheckAnonymous(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRecheckEnv(t)
		r.auth.cur.Store(nil) // both ports open
		a := r.atrCard("3b09")
		u := r.helloUser()
		selectCard(t, u, "atr", "3b09", `{"ATR": "3b09"}`)
		expectJSON(t, a.Recv(), stateAssoc)

		agents := r.acc.agents
		r.acc.agents = nil
		r.reload(RecheckResult{Checked: 2, Revoked: 1})
		expectError(t, u.Recv(), "this port now requires credentials")
		expectClosed(t, u, websocket.ClosePolicyViolation, "credentials now required")
		expectJSON(t, a.Recv(), stateReady)
		root := r.authUser(bearer(tokRoot))
		selectCard(t, root, "atr", "3b09", `{"ATR": "3b09"}`)
		expectJSON(t, a.Recv(), stateAssoc)

		r.acc.agents = agents
		r.reload(RecheckResult{Checked: 2, Revoked: 1})
		expectError(t, a.Recv(), "this port now requires credentials")
		expectClosed(t, a, websocket.ClosePolicyViolation, "credentials now required")
		root.Send(`{"msg_type": "reset_req"}`)
		expectError(t, root.Recv(), "card disconnected: the card port now requires credentials")
	})
}

// Accounts that did not change leave every connection as it was: no
// message to anyone, requests relayed as before.
func TestRecheckUnchanged(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRecheckEnv(t)
		c1, c3 := r.twoCards()
		alice := r.authUser(basicAuth("alice", "alice-pw"))
		take(t, alice, c1, "3b01")
		root := r.authUser(bearer(tokRoot))

		r.reload(RecheckResult{Checked: 4})
		r.recheck(RecheckResult{Checked: 4}) // and again, with what the first left
		synctest.Wait()
		for _, p := range []*wstest.Peer{c1, c3, alice, root} {
			if got := p.Pending(); len(got) != 0 {
				t.Fatalf("sent after the recheck: %q", got)
			}
		}
		pair{c1, alice}.roundTrip(t, "00b0000000", "01")
		if got := cardList(t, root); len(got) != 2 {
			t.Fatalf("root sees %v", got)
		}
		if n := r.rec.count("revoked") + r.rec.count("card_withdrawn") + r.rec.count("card_not_allowed"); n != 0 {
			t.Errorf("%d refusals observed", n)
		}
	})
}

// A user revoked while its APDU is with the card is told and closed at
// once; the card is handed on only after it has answered, so the late
// answer never reaches another user. A user whose card is withdrawn
// mid-APDU gets an error instead of the answer.
func TestRecheckMidAPDU(t *testing.T) {
	t.Run("revoked", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			r := newRecheckEnv(t)
			c1 := r.agentCard(tokPi1, "", "3b01", "A", efICCID8949)
			alice := r.authUser(bearer(tokAlice))
			take(t, alice, c1, "3b01")
			root := r.authUser(bearer(tokRoot))
			alice.Send(`{"msg_type": "c_apdu", "command": "00b0000000"}`)
			expectCAPDU(t, c1, "00b0000000")

			r.acc.user(t, "alice").TokenHashes = nil
			r.reload(RecheckResult{Checked: 3, Revoked: 1})
			expectRevoked(t, alice)
			root.Send(`{"msg_type": "select_card", "id_type": "atr", "id_str": "3b01"}`)
			expectError(t, root.Recv(), "in use by another user")
			c1.Send(`{"response": "01", "sw": "9000", "msg_type": "r_apdu"}`)
			expectJSON(t, c1.Recv(), stateReady)
			take(t, root, c1, "3b01")
			pair{c1, root}.roundTrip(t, "00b0000001", "02")
		})
	})
	t.Run("withdrawn", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			r := newRecheckEnv(t)
			c1 := r.agentCard(tokPi1, "", "3b01", "A", efICCID8949)
			alice := r.authUser(basicAuth("alice", "alice-pw"))
			take(t, alice, c1, "3b01")
			root := r.authUser(bearer(tokRoot))
			alice.Send(`{"msg_type": "reset_req"}`)
			expectJSON(t, c1.Recv(), `{"msg_type": "reset_req"}`)

			r.acc.user(t, "alice").Cards = auth.Rules{{Agent: "pi2"}}
			r.reload(RecheckResult{Checked: 3, Withdrawn: 1})
			root.Send(`{"msg_type": "select_card", "id_type": "atr", "id_str": "3b01"}`)
			expectError(t, root.Recv(), "in use by another user")
			c1.Send(`{"atr": "3b01", "msg_type": "reset_resp"}`)
			expectError(t, alice.Recv(), "access to this card was withdrawn by the server's operator")
			expectJSON(t, c1.Recv(), stateReady)
			alice.Send(`{"msg_type": "c_apdu", "command": "00b0000000"}`)
			expectError(t, alice.Recv(), errNoCard)
			take(t, root, c1, "3b01")
		})
	})
}

// A connection authenticated with the old accounts that registers only
// after Recheck has looked is rechecked on its way in.
func TestRecheckLateRegistration(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRecheckEnv(t)
		entered, release := make(chan struct{}), make(chan struct{})
		r.auth.hold = func() {
			entered <- struct{}{}
			<-release
		}
		type dialed struct {
			c   *websocket.Conn
			err error
		}
		done := make(chan dialed, 1)
		go func() {
			c, err := wstest.DialPipe(withHeader(r.srv.UserHandler(), "Authorization", bearer(tokAlice)), "127.0.0.1:39999")
			done <- dialed{c, err}
		}()
		<-entered // authenticating with the accounts that still have alice's token
		r.acc.user(t, "alice").TokenHashes = nil
		r.reload(RecheckResult{})
		close(release)
		d := <-done
		if d.err != nil {
			t.Fatal(d.err)
		}
		defer d.c.Close()
		_, msg, err := d.c.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		expectError(t, string(msg), "credentials revoked by the server's operator")
		_, _, err = d.c.ReadMessage()
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != websocket.ClosePolicyViolation {
			t.Fatalf("after the error: %v, want close 1008", err)
		}
	})
}

// Recheck needs a Rechecker; without any Authenticator there is nothing
// to do.
func TestRecheckAuthenticators(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{})
		if res, err := e.srv.Recheck(); err != nil || res != (RecheckResult{}) {
			t.Fatalf("open ports: %+v, %v", res, err)
		}
		e = newEnv(t, Config{Auth: onlyAuth{testAuth(t)}})
		if _, err := e.srv.Recheck(); !errors.Is(err, ErrNoRechecker) {
			t.Fatalf("plain Authenticator: %v", err)
		}
	})
}

// onlyAuth hides every method but the Authenticator's.
type onlyAuth struct{ a Authenticator }

func (o onlyAuth) UserRequest(r *http.Request) (*auth.Principal, error)  { return o.a.UserRequest(r) }
func (o onlyAuth) AgentRequest(r *http.Request) (*auth.Principal, error) { return o.a.AgentRequest(r) }
