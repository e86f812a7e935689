package status

import (
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/wsrc-go/wsrc/internal/version"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// t0 is the fixed "now" of the tests.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func ptr(v uint64) *uint64 { return &v }

// fixture is a relay with three cards from two agents (one unnamed, as
// pySim's card client is) and two users.
func fixture() Snapshot {
	return Snapshot{
		Version: "v1.2.3",
		Started: t0.Add(-90 * time.Minute),
		Cards: []Card{
			{
				ID:         1,
				Identities: map[string]string{"ATR": "3b9f96801fc78031e073fe211b575352435653494da3", "EID": "89049032123451234512345678901235", "ICCID": "8949440000001155314"},
				State:      StateAssociated, Agent: "pi-lab-1", AgentVersion: "v1.2.3", Reader: "Gemalto PC Twin Reader 00 00",
				RemoteAddr: "192.0.2.10:40001", ConnectedSince: t0.Add(-time.Hour), APDUs: 1234, User: ptr(7),
			},
			{
				ID:         2,
				Identities: map[string]string{"ATR": "3b9f95801fc38031e073fe211b63e208a8", "ICCID": "8988211000000123456", "IMSI": "001010123456789"},
				State:      StateReady, Agent: "pi-lab-1", AgentVersion: "v1.2.4", Reader: "Alcor Micro AU9560 00 00",
				RemoteAddr: "192.0.2.10:40002", ConnectedSince: t0.Add(-30 * time.Minute),
			},
			{
				ID:         3,
				Identities: map[string]string{"ATR": "3b00"},
				State:      StateInit, RemoteAddr: "[2001:db8::5]:51000", ConnectedSince: t0.Add(-5 * time.Second),
			},
		},
		Users: []User{
			{ID: 7, Name: "alice", RemoteAddr: "127.0.0.1:50123", ConnectedSince: t0.Add(-10 * time.Minute), Card: ptr(1)},
			{ID: 8, RemoteAddr: "[::1]:50124", ConnectedSince: t0.Add(-time.Second)},
		},
		Conflicts: []Conflict{
			{Time: t0.Add(-time.Minute), Identity: "ICCID", Value: "8949440000001155314", Agent: "rogue", Reader: "r0",
				RemoteAddr: "198.51.100.9:5000", ListedAgent: "lab-pi", ListedRemoteAddr: "192.0.2.10:41000"},
		},
	}
}

// serve starts the handler on a loopback test server; the server is
// closed when the test ends.
func serve(t *testing.T, opts Options) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(newHandler(opts, func() time.Time { return t0 }))
	t.Cleanup(srv.Close)
	return srv
}

// get fetches path and returns the response (body read) and its body.
func get(t *testing.T, srv *httptest.Server, method, path string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return resp, string(body)
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from the golden file (go test -update rewrites it)\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

func TestStatusGolden(t *testing.T) {
	srv := serve(t, Options{Source: SourceFunc(fixture)})
	resp, body := get(t, srv, http.MethodGet, PathStatus)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q", cc)
	}
	golden(t, "status.json", body)

	// The document decodes back into a Snapshot, with the derived fields.
	var s Snapshot
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		t.Fatal(err)
	}
	if s.UptimeSeconds != 5400 || !s.Time.Equal(t0) || len(s.Agents) != 2 || len(s.Cards) != 3 || len(s.Users) != 2 {
		t.Errorf("decoded %+v", s)
	}
}

func TestStatusEmpty(t *testing.T) {
	src := SourceFunc(func() Snapshot { return Snapshot{Cards: []Card{{ID: 1, State: StateInit}}} })
	srv := serve(t, Options{Source: src})
	_, body := get(t, srv, http.MethodGet, PathStatus)
	// The version is the build's; the golden file says "VERSION".
	golden(t, "status-minimal.json", strings.Replace(body, `"version": "`+version.Version+`"`, `"version": "VERSION"`, 1))
	for _, empty := range []string{`"users": []`, `"identities": {}`, `"readers": []`} {
		if !strings.Contains(body, empty) {
			t.Errorf("lists and identities must never be null: no %s in\n%s", empty, body)
		}
	}
	var s Snapshot
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		t.Fatal(err)
	}
	if s.Version == "" || !s.Started.Equal(t0) || s.UptimeSeconds != 0 {
		t.Errorf("defaults not filled in: version %q started %v uptime %d", s.Version, s.Started, s.UptimeSeconds)
	}
}

// TestStatusEscapesHTML checks that names from the network cannot turn
// the JSON into markup: encoding/json escapes <, > and &.
func TestStatusEscapesHTML(t *testing.T) {
	evil := `</script><img src=x onerror="alert(1)">&amp;`
	src := SourceFunc(func() Snapshot {
		return Snapshot{Cards: []Card{{ID: 1, Agent: evil, Reader: evil, Identities: map[string]string{"ATR": evil}}}}
	})
	srv := serve(t, Options{Source: src})
	_, body := get(t, srv, http.MethodGet, PathStatus)
	for _, bad := range []string{"<", ">", "&amp;"} {
		if strings.Contains(body, bad) {
			t.Errorf("JSON contains %q unescaped:\n%s", bad, body)
		}
	}
	var s Snapshot
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		t.Fatal(err)
	}
	if s.Cards[0].Agent != evil || s.Agents[0].Name != evil || s.Agents[0].Readers[0] != evil {
		t.Errorf("names not kept verbatim: %+v", s.Cards[0])
	}
}

func TestPage(t *testing.T) {
	srv := serve(t, Options{Source: SourceFunc(fixture)})
	resp, body := get(t, srv, http.MethodGet, "/")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	for k, want := range map[string]string{
		"Content-Type":            "text/html; charset=utf-8",
		"Content-Security-Policy": pageCSP,
		"X-Content-Type-Options":  "nosniff",
	} {
		if got := resp.Header.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	if !strings.Contains(pageCSP, "script-src 'self';") || strings.Contains(pageCSP, "unsafe") {
		t.Errorf("CSP must allow only the page's own script: %s", pageCSP)
	}
	// All script is in static/app.js: no inline script, no event
	// handler attributes, no external references.
	if m := regexp.MustCompile(`<script[^>]*>[^<]+</script>|\son[a-z]+=|(src|href)="(https?:)?//`).FindString(body); m != "" {
		t.Errorf("index.html has inline script or an external reference: %q", m)
	}
	for _, ref := range []string{`src="static/app.js"`, `href="static/style.css"`, `href="api/v1/status"`} {
		if !strings.Contains(body, ref) {
			t.Errorf("index.html lacks %s", ref)
		}
	}
}

func TestStaticFiles(t *testing.T) {
	srv := serve(t, Options{Source: SourceFunc(fixture)})
	for path, ct := range map[string]string{
		"/static/app.js":    "text/javascript; charset=utf-8",
		"/static/style.css": "text/css; charset=utf-8",
	} {
		resp, body := get(t, srv, http.MethodGet, path)
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != ct || len(body) < 100 {
			t.Errorf("%s: status %d, Content-Type %q, %d bytes", path, resp.StatusCode, resp.Header.Get("Content-Type"), len(body))
		}
		if resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s: no nosniff", path)
		}
	}
}

// TestScriptBuildsNoHTML is a static guard for the page's XSS safety
// (test/browser checks it in a real browser): the script never parses
// strings as HTML or code.
func TestScriptBuildsNoHTML(t *testing.T) {
	js, err := webFS.ReadFile("web/static/app.js")
	if err != nil {
		t.Fatal(err)
	}
	code := regexp.MustCompile(`(?m)^\s*//.*$`).ReplaceAll(js, nil) // comments may name them
	for _, sink := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", "setTimeout('", `setTimeout("`, "DOMParser", "createContextualFragment"} {
		if strings.Contains(string(code), sink) {
			t.Errorf("app.js uses %s", sink)
		}
	}
	if !strings.Contains(string(js), "const POLL_MS = "+itoa(PollInterval.Milliseconds())+";") {
		t.Errorf("app.js's POLL_MS differs from PollInterval %v", PollInterval)
	}
}

func itoa(n int64) string { b, _ := json.Marshal(n); return string(b) }

func TestHealthAndReady(t *testing.T) {
	var notReady error
	srv := serve(t, Options{Source: SourceFunc(fixture), Ready: func() error { return notReady }})
	tests := []struct {
		path     string
		notReady error
		code     int
		body     string
	}{
		{PathHealthz, nil, 200, "ok\n"},
		{PathReadyz, nil, 200, "ready\n"},
		{PathReadyz, errors.New("shutting down"), 503, "not ready: shutting down\n"},
		{PathHealthz, errors.New("shutting down"), 200, "ok\n"}, // alive even when not ready
	}
	for _, tt := range tests {
		notReady = tt.notReady
		resp, body := get(t, srv, http.MethodGet, tt.path)
		if resp.StatusCode != tt.code || body != tt.body {
			t.Errorf("%s (not ready: %v): %d %q, want %d %q", tt.path, tt.notReady, resp.StatusCode, body, tt.code, tt.body)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
			t.Errorf("%s: Content-Type %q", tt.path, ct)
		}
	}

	// Without a Ready func the handler is ready whenever it serves.
	srv2 := serve(t, Options{Source: SourceFunc(fixture)})
	if resp, body := get(t, srv2, http.MethodGet, PathReadyz); resp.StatusCode != 200 || body != "ready\n" {
		t.Errorf("readyz without Ready: %d %q", resp.StatusCode, body)
	}
}

func TestRoutes(t *testing.T) {
	srv := serve(t, Options{Source: SourceFunc(fixture)}) // no Metrics
	tests := []struct {
		method, path string
		code         int
	}{
		{"GET", "/", 200},
		{"HEAD", "/", 200},
		{"HEAD", PathStatus, 200},
		{"HEAD", PathHealthz, 200},
		{"POST", PathStatus, 405},
		{"PUT", "/", 405},
		{"DELETE", PathHealthz, 405},
		{"GET", "/index.html", 404},
		{"GET", "/nope", 404},
		{"GET", "/static/", 404},         // no directory listing
		{"GET", "/static/nope.js", 404},  // only the embedded files
		{"GET", "/static/../web", 404},   // cleaned to /web
		{"GET", "/api/v1/status/x", 404}, // exact paths
		{"GET", PathMetrics, 404},        // no Metrics given
	}
	for _, tt := range tests {
		resp, _ := get(t, srv, tt.method, tt.path)
		if resp.StatusCode != tt.code {
			t.Errorf("%s %s: %d, want %d", tt.method, tt.path, resp.StatusCode, tt.code)
		}
		if tt.code == 405 && resp.Header.Get("Allow") == "" {
			t.Errorf("%s %s: 405 without Allow", tt.method, tt.path)
		}
	}
}

func TestNewHandlerNeedsSource(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("NewHandler without Source did not panic")
		}
	}()
	NewHandler(Options{})
}
