package server

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsrc-go/wsrc/internal/testenv/wstest"
)

// recorder is an Observer and Tracer that keeps a line per event.
type recorder struct {
	mu     sync.Mutex
	lines  []string
	traces []APDUTrace
}

func (r *recorder) add(format string, args ...any) {
	r.mu.Lock()
	r.lines = append(r.lines, fmt.Sprintf(format, args...))
	r.mu.Unlock()
}

func (r *recorder) Connected(ev ConnEvent) { r.add("connected %s %s %s", ev.Port, ev.Remote, ev.Name) }
func (r *recorder) Disconnected(ev ConnEvent, why string) {
	r.add("disconnected %s %s %s: %s", ev.Port, ev.Remote, ev.Name, why)
}
func (r *recorder) CardChanged(ev CardEvent) {
	r.add("card %d %s/%s %v state=%q user=%q", ev.ID, ev.Agent, ev.Reader, ev.Identities, ev.State, ev.User)
}
func (r *recorder) Relayed(ev RequestEvent) {
	r.add("relayed card=%d %s %s %v %s", ev.CardID, ev.User, ev.Type, ev.Duration, ev.Outcome)
}
func (r *recorder) Refused(ev Refusal) { r.add("%s", ev.Reason) }
func (r *recorder) Problem(ev ConnEvent, kind ProblemKind) {
	r.add("problem %s %d %s", ev.Port, ev.ID, kind)
}

func (r *recorder) TraceAPDU(t APDUTrace) {
	r.mu.Lock()
	t.Command = append([]byte(nil), t.Command...)
	t.Response = append([]byte(nil), t.Response...)
	r.traces = append(r.traces, t)
	r.mu.Unlock()
}

// last returns the last line.
func (r *recorder) last() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.lines) == 0 {
		return ""
	}
	return r.lines[len(r.lines)-1]
}

// count counts the lines that start with prefix.
func (r *recorder) count(prefix string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, l := range r.lines {
		if strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}

// find returns the first line that starts with prefix.
func (r *recorder) find(prefix string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, l := range r.lines {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}

// Messages over the rate get an error and are dropped; the bucket
// refills with time; a peer that keeps going without backing off is
// closed.
func TestUserRateLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &recorder{}
		e := newEnv(t, Config{MessageRate: 10, MessageBurst: 5, RateStrikes: 3, Observer: rec})
		u := e.helloUser()
		list := `{"msg_type": "list_cards"}`
		for range 5 {
			u.Send(list)
			expectJSON(t, u.Recv(), `{"cards": [], "msg_type": "list_cards_ack"}`)
		}
		u.Send(list)
		expectJSON(t, u.Recv(), `{"message": "rate limit exceeded: at most 10 messages per second (bursts of 5); message dropped", "msg_type": "error"}`)
		time.Sleep(100 * time.Millisecond) // one token back
		u.Send(list)
		expectJSON(t, u.Recv(), `{"cards": [], "msg_type": "list_cards_ack"}`)
		time.Sleep(time.Second) // full again: strikes forgiven
		for range 5 {
			u.Send(list)
			u.Recv()
		}
		for range 3 {
			u.Send(list)
			expectError(t, u.Recv(), "rate limit exceeded")
		}
		u.Send(list)
		expectError(t, u.Recv(), "rate limit exceeded 3 times without backing off; closing the connection")
		expectClosed(t, u, websocket.ClosePolicyViolation, "rate limit exceeded")
		if n := rec.count(string(RefusedRateLimited)); n != 4 {
			t.Errorf("%d rate_limited events, want 4", n)
		}
		if rec.count(string(RefusedRateClosed)) != 1 {
			t.Error("no rate_closed event")
		}
	})
}

// A card agent's junk is limited too, but its reply to a pending request
// always passes, so that no user waits for a dropped reply.
func TestCardRateLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{MessageRate: 1, MessageBurst: 2, RateStrikes: 2})
		p := e.pair("3b0a")
		junk := `{"msg_type": "bogus"}`
		for range 2 {
			p.card.Send(junk)
			expectError(t, p.card.Recv(), `unknown msg_type "bogus"`)
		}
		p.card.Send(junk)
		expectError(t, p.card.Recv(), "rate limit exceeded")
		// The bucket is empty, yet the reply goes through.
		p.user.Send(`{"msg_type": "c_apdu", "command": "00b0000000"}`)
		expectCAPDU(t, p.card, "00b0000000")
		p.card.Send(rapdu6a82)
		expectJSON(t, p.user.Recv(), rapdu6a82)
		p.card.Send(junk)
		expectError(t, p.card.Recv(), "rate limit exceeded")
		p.card.Send(junk)
		expectError(t, p.card.Recv(), "closing the connection")
		expectClosed(t, p.card, websocket.ClosePolicyViolation, "rate limit exceeded")
		time.Sleep(2 * time.Second) // the user's own bucket
		p.user.Send(`{"msg_type": "c_apdu", "command": "00b0000000"}`)
		expectError(t, p.user.Recv(), "card disconnected: rate limit exceeded 2 times")
	})
}

// A negative MessageRate turns the limit off.
func TestRateLimitOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{MessageRate: -1, MessageBurst: 1})
		u := e.helloUser()
		for range 50 {
			u.Send(`{"msg_type": "list_cards"}`)
			expectJSON(t, u.Recv(), `{"cards": [], "msg_type": "list_cards_ack"}`)
		}
	})
}

// MaxConnsPerAddr counts per port and client; loopback is exempt; a
// closed connection frees its place.
func TestConnsPerAddress(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &recorder{}
		e := newEnv(t, Config{MaxConnsPerAddr: 2, Observer: rec})
		a := e.pipe(e.srv.UserHandler(), "192.0.2.1:1")
		e.pipe(e.srv.UserHandler(), "192.0.2.1:2")
		_, err := wstest.DialPipe(e.srv.UserHandler(), "192.0.2.1:3")
		if err == nil || !strings.Contains(err.Error(), "503") {
			t.Fatalf("third connection: %v, want 503", err)
		}
		if rec.last() != string(RefusedAddrFull) {
			t.Fatalf("event %q", rec.last())
		}
		e.pipe(e.srv.CardHandler(), "192.0.2.1:4") // another port
		e.pipe(e.srv.UserHandler(), "192.0.2.2:1") // another address
		for i := range 4 {                         // loopback
			e.pipe(e.srv.UserHandler(), fmt.Sprintf("127.0.0.1:%d", 100+i))
		}
		a.Close(websocket.CloseNormalClosure, "")
		synctest.Wait()
		e.pipe(e.srv.UserHandler(), "192.0.2.1:5")
	})
}

// The server answers the peers' pings, as well as sending its own.
func TestPeerPings(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{})
		pongs := make(chan string, 1)
		u := e.pipe(e.srv.UserHandler(), "", func(c *websocket.Conn) {
			c.SetPongHandler(func(data string) error { pongs <- data; return nil })
		})
		u.Send(`{"msg_type": "hello", "client_type": "user"}`)
		expectJSON(t, u.Recv(), `{"msg_type": "hello_ack"}`)
		if err := u.Conn.WriteControl(websocket.PingMessage, []byte("are you there"), time.Now().Add(time.Second)); err != nil {
			t.Fatal(err)
		}
		if got := <-pongs; got != "are you there" {
			t.Fatalf("pong %q", got)
		}
	})
}

// A dead peer is found within twice the ping interval, whatever the
// interval (here 5 s: closed after 10 s).
func TestDeadPeerWithinTwoPings(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{PingInterval: 5 * time.Second, PongTimeout: 5 * time.Second})
		c := e.pipe(e.srv.CardHandler(), "", wstest.IgnorePings())
		helloCard(t, c, "3b0b")
		identifyATROnly(t, c)
		start := time.Now()
		expectClosed(t, c, websocket.CloseInternalServerErr, "keepalive ping timeout")
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("dead peer found after %v, want at most 10s", d)
		}
	})
}

func TestConfigValidate(t *testing.T) {
	if err := (Config{}).Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for _, c := range []Config{
		{PingInterval: 10 * time.Second, PongTimeout: 11 * time.Second},
		{MaxFrameSize: 100},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
	if err := (Config{PingInterval: -1, PongTimeout: time.Hour}).Validate(); err != nil {
		t.Errorf("keepalive off: %v", err)
	}
}

// The Observer sees a session from start to end; the Tracer every APDU,
// identification included; Stats counts.
func TestObserverAndTracer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &recorder{}
		e := newEnv(t, Config{Observer: Observers(nil, rec, NopObserver{}), Tracer: rec})
		p := e.pair("3b0c")
		if st := e.srv.Stats(); st != (Stats{Cards: 1, CardsInUse: 1, Users: 1}) {
			t.Fatalf("stats %+v", st)
		}
		p.roundTrip(t, "00b0000000", "aa")
		cards, users := e.srv.Snapshot()
		if len(cards) != 1 || len(users) != 1 || cards[0].ID != 1 || cards[0].User != 2 || cards[0].APDUs != 1 ||
			cards[0].State != "associated" || cards[0].Remote != "127.0.0.1:40001" || users[0].ID != 2 || users[0].Card != 1 {
			t.Fatalf("snapshot %+v %+v", cards, users)
		}
		p.user.Send(`{"msg_type": "reset_req"}`)
		expectJSON(t, p.card.Recv(), `{"msg_type": "reset_req"}`)
		p.card.Send(`{"atr": "3b0d", "msg_type": "reset_resp"}`)
		expectJSON(t, p.user.Recv(), `{"atr": "3b0d", "msg_type": "reset_resp"}`)
		p.user.Close(websocket.CloseNormalClosure, "bye")
		expectJSON(t, p.card.Recv(), stateReady)
		synctest.Wait() // the user's connection is over
		p.card.Close(websocket.CloseNormalClosure, "")
		synctest.Wait()
		want := []string{
			"connected card 127.0.0.1:40001 ",
			`card 1 / map[ATR:3b0c] state="init" user=""`,
			`card 1 / map[ATR:3b0c] state="ready" user=""`,
			"connected user 127.0.0.1:40002 ",
			`card 1 / map[ATR:3b0c] state="associated" user="127.0.0.1:40002"`,
			"relayed card=1 127.0.0.1:40002 c_apdu 0s ok",
			"relayed card=1 127.0.0.1:40002 reset_req 0s ok",
			`card 1 / map[ATR:3b0d] state="ready" user=""`,
			"disconnected user 127.0.0.1:40002 : the user closed the connection",
			`card 1 / map[ATR:3b0d] state="" user=""`,
			"disconnected card 127.0.0.1:40001 : the card agent closed the connection",
		}
		rec.mu.Lock()
		got := rec.lines
		rec.mu.Unlock()
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		if len(rec.traces) != 4 {
			t.Fatalf("%d traces, want 4: %+v", len(rec.traces), rec.traces)
		}
		id := rec.traces[0]
		if id.User != "" || fmt.Sprintf("%x", id.Command) != cmdSelectISDR || id.SW != 0x6a82 || id.Err != "" {
			t.Errorf("identification trace %+v", id)
		}
		rel := rec.traces[2]
		if rel.User != "127.0.0.1:40002" || fmt.Sprintf("%x", rel.Command) != "00b0000000" || fmt.Sprintf("%x", rel.Response) != "aa" ||
			rel.SW != 0x9000 || rel.CardID != 1 {
			t.Errorf("relay trace %+v", rel)
		}
		reset := rec.traces[3]
		if !reset.Reset || reset.Command != nil || fmt.Sprintf("%x", reset.Response) != "3b0d" {
			t.Errorf("reset trace %+v", reset)
		}
	})
}

// Problems are reported by kind, for metrics.
func TestObserverProblems(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &recorder{}
		e := newEnv(t, Config{MaxFrameSize: 1024, Observer: rec})
		u := e.helloUser()
		for _, tc := range []struct{ send, want string }{
			{`{"msg_type": "bogus"}`, "problem user 1 bad_message"},
			{`{"msg_type": "c_apdu", "command": "00b0000000"}`, "problem user 1 unexpected_message"},
			{`{"msg_type": "select_card", "id_type": "atr", "id_str": "3b"}`, "problem user 1 select"},
			{`{"msg_type": "select_card", "id_type": "foo", "id_str": "3b"}`, "problem user 1 bad_message"},
		} {
			u.Send(tc.send)
			u.Recv()
			if got := rec.last(); got != tc.want {
				t.Errorf("%s: %q, want %q", tc.send, got, tc.want)
			}
		}
		late := e.user()
		late.Recv() // no hello within 10s
		late.WaitClosed()
		synctest.Wait()
		if rec.find("problem user 2 hello") == "" {
			t.Error("no hello problem")
		}
		u.Send(`{"msg_type": "list_cards", "pad": "` + strings.Repeat("x", 1100) + `"}`)
		u.Recv()
		u.WaitClosed()
		synctest.Wait()
		if rec.find("problem user 1 too_big") == "" {
			t.Error("no too_big problem")
		}
		c := e.pipe(e.srv.CardHandler(), "", wstest.IgnorePings())
		helloCard(t, c, "3b01")
		identifyATROnly(t, c)
		c.WaitClosed()
		synctest.Wait()
		if rec.find("problem card 3 keepalive") == "" {
			t.Errorf("no keepalive problem: %q", rec.lines)
		}
		noKey := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			r.Header.Del("Sec-Websocket-Key")
			e.srv.UserHandler().ServeHTTP(w, r)
		})
		if _, err := wstest.DialPipe(noKey, "127.0.0.1:1"); err == nil {
			t.Fatal("bad upgrade accepted")
		}
		if rec.find("problem user 0 upgrade") == "" {
			t.Error("no upgrade problem")
		}
	})
}
