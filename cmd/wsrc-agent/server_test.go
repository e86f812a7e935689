package main

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/wsrc-go/wsrc/agent"
	"github.com/wsrc-go/wsrc/internal/auth"
	"github.com/wsrc-go/wsrc/protocol"
	"github.com/wsrc-go/wsrc/server"
)

// serverEvents is a server.Observer that hands cards and refusals to the
// test.
type serverEvents struct {
	server.NopObserver
	cards   chan server.CardEvent
	refused chan server.Refusal
}

func (e *serverEvents) CardChanged(ev server.CardEvent) {
	select {
	case e.cards <- ev:
	default:
	}
}

func (e *serverEvents) Refused(r server.Refusal) {
	select {
	case e.refused <- r:
	default:
	}
}

// TestAgainstRealServer: the agent and the real server agree on wss://
// (the agent pinning the server's certificate) and on the agent token:
// with the right token the card is registered under the agent's
// configured name; with a wrong one the server refuses it and the agent
// says so.
func TestAgainstRealServer(t *testing.T) {
	const token = "wsrc_agent-token-for-the-test"
	store, err := auth.NewStore(nil, []auth.Agent{{Name: "pi-lab", TokenHashes: []auth.TokenHash{auth.HashToken(token)}, AllCards: true}})
	if err != nil {
		t.Fatal(err)
	}
	events := &serverEvents{cards: make(chan server.CardEvent, 64), refused: make(chan server.Refusal, 64)}
	srv := server.New(server.Config{Auth: store, Observer: events}, slog.New(slog.DiscardHandler))
	cards := httptest.NewTLSServer(srv.CardHandler())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		cards.Close()
	})
	url := "wss://" + cards.Listener.Addr().String() + "/"
	pin := agent.Fingerprint(cards.Certificate().Raw)

	serveAgent := func(tok string) (stop func() (int, string)) {
		ctx, cancel := context.WithCancel(context.Background())
		var stderr syncBuffer
		done := make(chan int, 1)
		env := envOf(map[string]string{envToken: tok})
		go func() {
			done <- run(ctx, []string{"--sim", "1", "--server", url, "--tls-pin-sha256", pin}, env, &syncBuffer{}, &stderr)
		}()
		return func() (int, string) {
			cancel()
			return <-done, stderr.String()
		}
	}

	stop := serveAgent(token)
	deadline := time.After(30 * time.Second)
	for ready := false; !ready; {
		select {
		case ev := <-events.cards:
			if ev.State == protocol.StateReady {
				ready = true
				if ev.Agent != "pi-lab" {
					t.Errorf("card registered by agent %q, want pi-lab", ev.Agent)
				}
			}
		case r := <-events.refused:
			t.Fatalf("server refused the agent: %+v", r)
		case <-deadline:
			t.Fatal("no card became ready within 30s")
		}
	}
	if code, log := stop(); code != 0 {
		t.Fatalf("exit %d:\n%s", code, log)
	}

	stop = serveAgent("wsrc_a-wrong-token")
	for range 2 { // the agent has logged the first refusal before it retries
		select {
		case r := <-events.refused:
			if r.Reason != server.RefusedBadCredential || r.Port != server.PortCard {
				t.Errorf("refusal %+v", r)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the server did not refuse a wrong token (twice) within 30s")
		}
	}
	code, log := stop()
	if code != 0 || !strings.Contains(log, `msg="server refused the agent token"`) || strings.Contains(log, "wrong-token") {
		t.Errorf("exit %d, log:\n%s", code, log)
	}
}
