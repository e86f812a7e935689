package main

import (
	"context"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"

	"github.com/wsrc-go/wsrc/agent/agenttest"
	"github.com/wsrc-go/wsrc/agent/simbackend"
	"github.com/wsrc-go/wsrc/card"
)

func TestMain(m *testing.M) {
	defaultConfigPath = "" // never this machine's /etc/wsrc/agent.toml
	if os.Getenv("WSRC_AGENT_TEST_MAIN") == "1" {
		// Re-executed by TestSignal: be the real program.
		os.Args = append([]string{"wsrc-agent"}, strings.Fields(os.Getenv("WSRC_AGENT_TEST_ARGS"))...)
		main()
		return
	}
	goleak.VerifyTestMain(m)
}

func noEnv(string) string { return "" }

func noLookup(string) (string, bool) { return "", false }

// syncBuffer collects output safely from the agent's goroutines.
type syncBuffer = agenttest.Buffer

func runCmd(t *testing.T, env func(string) string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb syncBuffer
	code = run(context.Background(), args, env, &out, &errb)
	return code, out.String(), errb.String()
}

func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string // in stdout+stderr
	}{
		{[]string{"--help"}, 0, "wsrc-agent readers [flags]"},
		{[]string{"-h"}, 0, "WSRC_AGENT_<FLAG>"},
		{[]string{"-h"}, 0, "wsrc-agent check-config [flags]"},
		{[]string{"--version"}, 0, "wsrc-agent "},
		{[]string{"--no-such-flag"}, 2, "flag provided but not defined"},
		{[]string{"--sim", "x"}, 2, "invalid value"},
		{[]string{"-h"}, 0, "--reader-include"},
		{[]string{"--help"}, 0, `It does not ask the server`},
		{[]string{"--help"}, 0, `apply to the pcsc and ccid backends alike`},
		{[]string{"--help"}, 0, `READY=1 is sent when the server has accepted the first card session`},
		{[]string{"--backend", "sim", "--reader-exclude", "x"}, 2, `--reader-exclude: reader patterns apply to the pcsc and ccid backends, which backend "sim" does not use`},
		{[]string{"--backend", "ccid", "--reader-exclude", "[x"}, 2, `--reader-exclude: bad pattern "[x": syntax error in pattern`},
		{[]string{"--backend", "ccid", "--pcsc-shared"}, 2, `--pcsc-shared: applies to the pcsc backend, which backend "ccid" does not use`},
		{[]string{"--backend", "auto,pcsc"}, 2, `--backend: backend "pcsc" given twice (auto includes ccid, pcsc)`},
		{[]string{"--backend", "ccid,auto"}, 2, `backend "ccid" given twice (auto includes ccid, pcsc)`},
		{[]string{"--backend", "auto,auto"}, 2, `backend "auto" given twice`},
		{[]string{"--reader-include", "["}, 2, `--reader-include: bad pattern "["`},
		{[]string{"--backend", "pcsc", "--reader-exclude", "/(/"}, 2, `--reader-exclude: bad pattern "/(/"`},
		{[]string{"--reader-include", ""}, 2, "empty value"},
		{[]string{"--sim", "1", "--reader-include", "x*"}, 2, `reader patterns apply to the pcsc and ccid backends, which backend "" does not use`},
		{[]string{"--backend", "floppy"}, 2, `--backend: unknown backend "floppy" (known: sim, pcsc, ccid, auto)`},
		{[]string{"--backend", "sim,sim"}, 2, `backend "sim" given twice`},
		{[]string{"--sim", "-1"}, 2, "--sim: -1: the number of cards cannot be negative"},
		{[]string{"--sim", "100000"}, 2, "at most 1000"},
		{[]string{"--sim", "1", "--sim-protocol", "t2"}, 2, `--sim-protocol: "t2": want t0 or t1`},
		{[]string{"--sim", "1", "--log-level", "loud"}, 2, `--log-level: "loud"`},
		{[]string{"--sim", "1", "frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"readers", "extra", "--sim", "1"}, 2, "readers takes no arguments"},
		{[]string{"--sim", "1", "--server", "http://127.0.0.1:1/"}, 2, "--server: bad server URL"},
		{[]string{"--sim", "1", "--server", "wss://pi:hunter2@relay.example/"}, 2, `--server: bad server URL "wss://pi:xxxxx@relay.example/": user information in the URL is not supported`},
		{[]string{"--sim", "1", "--tls-ca-file", "/nonexistent/ca.pem"}, 2, "--tls-ca-file: TLS settings need a wss:// server URL"},
		{[]string{"--sim", "1", "--server", "wss://h/", "--tls-ca-file", "/nonexistent/ca.pem"}, 2, "--tls-ca-file: reading CA file: open /nonexistent/ca.pem"},
		{[]string{"--sim", "1", "--server", "wss://h/", "--tls-pin-sha256", "abc"}, 2, `--tls-pin-sha256: pin "abc": want a SHA-256 fingerprint`},
		{[]string{"--sim", "1", "--server", "wss://h/", "--tls-cert-file", "/x"}, 2, "--tls-cert-file: a client certificate needs tls key_file (--tls-key-file) too"},
		{[]string{"--sim", "1", "--token-file", "/nonexistent/token"}, 2, "--token-file: reading the token file: open /nonexistent/token"},
		{[]string{"--sim", "1", "--config", "/nonexistent/agent.toml"}, 2, "reading configuration: open /nonexistent/agent.toml"},
	} {
		code, out, errs := runCmd(t, noEnv, tc.args...)
		if code != tc.code || !strings.Contains(out+errs, tc.want) {
			t.Errorf("wsrc-agent %q: exit %d, output\n%s%s\nwant exit %d and %q", tc.args, code, out, errs, tc.code, tc.want)
		}
	}
}

// TestBackendChoice: what --backend and --sim resolve to (without running
// the backends: ccid would look at this machine's USB devices).
func TestBackendChoice(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "ccid,pcsc"},
		{[]string{"--backend", "auto"}, "ccid,pcsc"},
		{[]string{"--sim", "2"}, "sim"},
		{[]string{"--backend", "pcsc", "--sim", "1"}, "pcsc,sim"},
		{[]string{"--backend", "sim,auto"}, "sim,ccid,pcsc"},
		{[]string{"--backend", " CCID "}, "ccid"},
	} {
		o, err := parseArgs(tc.args, noLookup, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		bs, err := o.backends()
		closeBackends(bs, o.logger())
		if err != nil {
			t.Errorf("%q: %v", tc.args, err)
			continue
		}
		var names []string
		for _, b := range bs {
			names = append(names, b.Name())
		}
		if got := strings.Join(names, ","); got != tc.want {
			t.Errorf("%q: backends %s, want %s", tc.args, got, tc.want)
		}
	}
}

func TestReaders(t *testing.T) {
	code, out, errs := runCmd(t, noEnv, "readers", "--sim", "2")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "BACKEND") {
		t.Fatalf("output:\n%s", out)
	}
	for i, l := range lines[1:] {
		for _, want := range []string{"sim ", simbackend.ReaderName(i), "loaded", "ATR 3b9f96801fc78031e073fe211b575352435653494da3", "ICCID " + simbackend.ICCID(i), "EID " + simbackend.EID(i)} {
			if !strings.Contains(l, want) {
				t.Errorf("line %d %q lacks %q", i, l, want)
			}
		}
	}
	// Flags before the command work too; no cards: the backend is skipped.
	code, out, _ = runCmd(t, noEnv, "--backend", "sim", "--sim", "0", "readers")
	if code != 0 || !strings.Contains(out, "skipped: no simulated cards") {
		t.Errorf("exit %d, output:\n%s", code, out)
	}
}

// TestServe: two simulated cards are two sessions the server can identify;
// cancelling (what SIGINT/SIGTERM do) closes both cleanly and exits 0.
func TestServe(t *testing.T) {
	srv := agenttest.NewServer(t)
	env := func(k string) string {
		if k == envServer {
			return srv.URL()
		}
		return ""
	}
	ctx, cancel := context.WithCancel(context.Background())
	var stderr syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"--sim", "2", "--agent-name", "pi-7", "--log-level", "debug"}, env, &syncBuffer{}, &stderr)
	}()
	seen := map[string]bool{}
	var conns []*agenttest.Conn
	for range 2 {
		conn := srv.Accept()
		h := conn.Hello()
		if h.Agent != "pi-7" {
			t.Errorf("hello agent %q", h.Agent)
		}
		id, err := card.Identify(ctx, conn.Transmitter())
		if err != nil {
			t.Fatal(err)
		}
		seen[id.ICCID] = true
		conns = append(conns, conn)
	}
	if !seen[simbackend.ICCID(0)] || !seen[simbackend.ICCID(1)] {
		t.Errorf("ICCIDs seen: %v", seen)
	}
	cancel()
	for _, c := range conns {
		if code, _ := c.ExpectClose(); code != websocket.CloseGoingAway {
			t.Errorf("close code %d, want 1001", code)
		}
	}
	if code := <-done; code != 0 {
		t.Errorf("exit %d; log:\n%s", code, stderr.String())
	}
	if !strings.Contains(stderr.String(), "wsrc-agent stopped") {
		t.Errorf("log lacks the stop line:\n%s", stderr.String())
	}
}
