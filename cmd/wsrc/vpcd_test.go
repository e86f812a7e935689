package main

import (
	"context"
	"encoding/hex"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/client/clienttest"
	"github.com/wsrc-go/wsrc/internal/testenv/pcscdtest"
	"github.com/wsrc-go/wsrc/pcsc"
)

func TestVPCDUsage(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"vpcd"}, "exactly one of --iccid, --eid, --atr, --id"},
		{[]string{"vpcd", "--iccid", "1", "--eid", "2"}, "exactly one of"},
		{[]string{"vpcd", "--iccid", "1", "extra"}, `no arguments expected, got "extra"`},
		{[]string{"vpcd", "--iccid", "1", "--vpcd", "35963"}, `--vpcd wants HOST:PORT, got "35963"`},
		{[]string{"vpcd", "--iccid", "1", "--vpcd", "localhost:0"}, `--vpcd: bad port "0"`},
		{[]string{"vpcd", "--iccid", "1", "--token-file", filepath.Join(dir, "nope")}, "--token-file: open"},
		{[]string{"vpcd", "--iccid", "1", "--token-file", empty}, "holds no token"},
		{[]string{"vpcd", "--iccid", "1", "--tls-ca-file", empty}, "holds no PEM certificate"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			r := runWith(t.Context(), nil, "", tc.args...)
			if r.code != exitUsage || !strings.Contains(r.stderr, tc.want) || !strings.Contains(r.stderr, " --help' for usage") {
				t.Errorf("exit %d, stderr %q; want %d and %q", r.code, r.stderr, exitUsage, tc.want)
			}
		})
	}
}

// tool runs a PC/SC application from a Debian package (scriptor from
// pcsc-tools, opensc-tool from opensc) against the test's private pcscd;
// missing, it skips the test (fails it under CI=true).
func tool(t *testing.T, stdin, name string, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		msg := name + " not installed (scripts/deps.sh test installs it)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg + "; skipping")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	t.Logf("$ %s %s\n%s", name, strings.Join(args, " "), out)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return string(out)
}

// TestVPCDRealStack runs `wsrc vpcd` against a private pcscd with vpcd and
// a wss:// server that wants a bearer token (read from --token-file), and
// uses the card with opensc-tool and scriptor, holding the card and with
// --share. Ctrl-C (ctx) ends it with status 0.
func TestVPCDRealStack(t *testing.T) {
	if testing.Short() {
		t.Skip("real PC/SC stack test in -short mode")
	}
	t.Run("hold", func(t *testing.T) { vpcdRealStack(t) })
	t.Run("share", func(t *testing.T) { vpcdRealStack(t, "--share") })
}

func vpcdRealStack(t *testing.T, extra ...string) {
	d := pcscdtest.Start(t)
	fakeSrv, env := fake(t, clienttest.Config{TLS: true, Authorize: func(r *http.Request) error {
		if r.Header.Get("Authorization") != "Bearer s3cret-token" {
			return errors.New("bad token")
		}
		return nil
	}})
	dir := t.TempDir()
	ca, tok := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "token")
	if err := os.WriteFile(ca, fakeSrv.CertificatePEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tok, []byte("s3cret-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	res := make(chan result, 1)
	go func() {
		args := append([]string{"vpcd", "--vpcd", d.SlotAddr(0), "--iccid", clienttest.TranscriptICCID,
			"--token-file", tok, "--tls-ca-file", ca}, extra...)
		res <- runWith(ctx, env, "", args...)
	}()
	defer func() {
		cancel()
		<-res
	}()

	waitPresent(t, d.Reader(0))
	out := tool(t, "", "opensc-tool", "--reader", "0", "--atr")
	if !strings.Contains(strings.ReplaceAll(out, ":", ""), clienttest.TranscriptATR) {
		t.Errorf("opensc-tool --atr: want the remote card's ATR %s", clienttest.TranscriptATR)
	}
	raw, err := card.EncodeICCID(clienttest.TranscriptICCID)
	if err != nil {
		t.Fatal(err)
	}
	out = tool(t, "00 A4 00 04 02 3F 00\n00 A4 00 04 02 2F E2\n00 B0 00 00 0A\n", "scriptor", "-r", d.Reader(0))
	if got := strings.ReplaceAll(strings.ToLower(out), " ", ""); !strings.Contains(got, hex.EncodeToString(raw)+"9000") {
		t.Errorf("scriptor did not read EF.ICCID %x", raw)
	}

	cancel()
	r := <-res
	res <- r
	if r.code != exitOK {
		t.Errorf("wsrc vpcd exited %d after the signal; stderr:\n%s", r.code, r.stderr)
	}
	want := []string{"card selected", "card inserted", "card removed from the reader", "wsrc vpcd: stopped"}
	if len(extra) > 0 {
		want = append(want, "card released (powered off)", "share=true")
	}
	for _, s := range want {
		if !strings.Contains(r.stderr, s) {
			t.Errorf("stderr lacks %q:\n%s", s, r.stderr)
		}
	}
	if strings.Contains(r.stderr, "s3cret") {
		t.Errorf("the token leaked into the log:\n%s", r.stderr)
	}
}

// waitPresent waits for pcscd to report a card in reader.
func waitPresent(t *testing.T, reader string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	found := make(chan struct{})
	var once sync.Once
	err := pcsc.Watch(ctx, pcsc.WatchOptions{
		Filter: pcsc.Filter{Include: []string{reader}},
		Logger: slog.New(slog.DiscardHandler),
	}, func(ev pcsc.ReaderEvent) {
		if ev.Reader == reader && ev.CardPresent {
			once.Do(func() { close(found); cancel() })
		}
	})
	select {
	case <-found:
	default:
		t.Fatalf("no card in %s within 30s (watch: %v)", reader, err)
	}
}

// TestTokenAndCA: every command takes the user's token (--token-file or
// $WSRC_TOKEN, sent as a bearer token) and a private CA (--tls-ca-file).
func TestTokenAndCA(t *testing.T) {
	srv, env := fake(t, clienttest.Config{TLS: true, Authorize: func(r *http.Request) error {
		if r.Header.Get("Authorization") != "Bearer tok-1" {
			return errors.New("bad token")
		}
		return nil
	}})
	dir := t.TempDir()
	ca, tok := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "token")
	if err := os.WriteFile(ca, srv.CertificatePEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tok, []byte("tok-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := runWith(t.Context(), env, "", "list", "--tls-ca-file", ca, "--token-file", tok); r.code != exitOK || !strings.Contains(r.stdout, clienttest.TranscriptICCID) {
		t.Errorf("list with --token-file: %+v", r)
	}
	env["WSRC_TOKEN"] = "tok-1"
	if r := runWith(t.Context(), env, "", "--tls-ca-file", ca, "apdu", "--iccid", clienttest.TranscriptICCID, "00a40004023f00"); r.code != exitOK {
		t.Errorf("apdu with $WSRC_TOKEN: %+v", r)
	}
	env["WSRC_TOKEN"] = "wrong"
	if r := runWith(t.Context(), env, "", "list", "--tls-ca-file", ca); r.code != exitFailure || !strings.Contains(r.stderr, "401") {
		t.Errorf("list with a wrong token: %+v", r)
	}
	delete(env, "WSRC_TOKEN")
	if r := runWith(t.Context(), env, "", "list", "--token-file", tok); r.code != exitFailure || !strings.Contains(r.stderr, "certificate") {
		t.Errorf("list without the CA: %+v", r)
	}
}
