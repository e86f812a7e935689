package agent

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsrc-go/wsrc/agent/agenttest"
)

const testToken = "s3cret-agent-token"

// runRefused runs a Session with token against p for d of fake time and
// returns its log.
func runRefused(t *testing.T, p *pipeServer, server, token string, d time.Duration) string {
	t.Helper()
	logs := &agenttest.Buffer{}
	timing := Timing{MinBackoff: s1, MaxBackoff: 8 * s1}
	s := NewSession(Config{Server: server, Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Timing: timing, Dialer: p.dialer(), Token: token}, newFakeCard(), "r")
	s.jitter = fullJitter
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	time.Sleep(d)
	cancel()
	<-done
	p.wg.Wait()
	return logs.String()
}

// TestTokenRefused: the token goes in every upgrade request as a Bearer
// credential; a 401 is logged plainly ("server refused the agent token")
// and retried with the usual backoff, not in a tight loop; the token
// never reaches the log.
func TestTokenRefused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := &pipeServer{t: t,
			answer: func(n int) (int, http.Header) {
				if n < 3 {
					return http.StatusUnauthorized, http.Header{"Www-Authenticate": {`Bearer realm="wsrc"`}}
				}
				return 0, nil
			},
			handle: func(n int, ws *websocket.Conn) { helloAndHold(t, ws, time.Hour) },
		}
		log := runRefused(t, p, "ws://card.example:4221/", testToken, 10*s1)
		checkDials(t, p.dialTimes(), 0, s1, 3*s1, 7*s1)
		if got := strings.Count(log, `level=ERROR msg="server refused the agent token"`); got != 3 {
			t.Errorf("%d refusal lines, want 3:\n%s", got, log)
		}
		if strings.Contains(log, testToken) {
			t.Errorf("the log shows the token:\n%s", log)
		}
		if !strings.Contains(log, "check the agent's token") || !strings.Contains(log, "connected to server") {
			t.Errorf("log:\n%s", log)
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		for i, h := range p.headers {
			if got := h.Values("Authorization"); len(got) != 1 || got[0] != "Bearer "+testToken {
				t.Errorf("request %d: Authorization %q", i, got)
			}
		}
	})
}

// TestNoTokenRefused: without a token a 401 says that one is needed, and
// no Authorization header is sent.
func TestNoTokenRefused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := &pipeServer{t: t, answer: func(int) (int, http.Header) { return http.StatusUnauthorized, nil }}
		log := runRefused(t, p, "ws://card.example:4221/", "", 2*s1)
		if !strings.Contains(log, "none is configured") {
			t.Errorf("log:\n%s", log)
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		if a := p.headers[0].Get("Authorization"); a != "" {
			t.Errorf("Authorization %q sent without a token", a)
		}
	})
}

// TestThrottled: a 429 with Retry-After holds the next attempt back at
// least that long.
func TestThrottled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := &pipeServer{t: t, answer: func(n int) (int, http.Header) {
			return http.StatusTooManyRequests, http.Header{"Retry-After": {"60"}}
		}}
		log := runRefused(t, p, "ws://card.example:4221/", testToken, 61*s1)
		checkDials(t, p.dialTimes(), 0, 60*s1)
		if !strings.Contains(log, "server is refusing this address after failed logins") {
			t.Errorf("log:\n%s", log)
		}
	})
}
