package browser

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image/png"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/wsrc-go/wsrc/internal/status"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// runTimeout bounds one Chromium run (start, load, virtual time, dump);
// a healthy run takes one or two seconds.
const runTimeout = 30 * time.Second

// virtualBudget is the virtual time each page gets: long enough for the
// first load and two further polls.
const virtualBudget = 2*status.PollInterval + status.PollInterval/2

// findChromium returns the browser to run, or skips the test.
func findChromium(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("browser tests skipped in -short mode")
	}
	if p := os.Getenv("WSRC_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("chromium not found (apt-get install chromium); required under CI=true")
	}
	t.Skip("chromium not found (apt-get install chromium)")
	return ""
}

// fakeSource serves a snapshot per call: the first calls get the first
// snapshots of seq, every later call the last one.
type fakeSource struct {
	mu    sync.Mutex
	seq   []status.Snapshot
	calls int
}

func (f *fakeSource) Snapshot() status.Snapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.seq[min(f.calls, len(f.seq)-1)]
	f.calls++
	return s
}

func (f *fakeSource) set(seq ...status.Snapshot) {
	f.mu.Lock()
	f.seq, f.calls = seq, 0
	f.mu.Unlock()
}

func (f *fakeSource) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// site is the status handler on loopback, with a trap for requests that
// injected markup would make (paths under /pwned).
type site struct {
	*httptest.Server
	src *fakeSource

	mu      sync.Mutex
	trapped []string
	broken  bool // the status API answers 503
	refused int  // status requests answered 503
}

func newSite(t *testing.T, seq ...status.Snapshot) *site {
	t.Helper()
	s := &site{src: &fakeSource{seq: seq}}
	h := status.NewHandler(status.Options{Source: s.src, Metrics: status.NewMetrics()})
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/pwned") {
			s.mu.Lock()
			s.trapped = append(s.trapped, r.URL.String())
			s.mu.Unlock()
			http.NotFound(w, r)
			return
		}
		s.mu.Lock()
		broken := s.broken && r.URL.Path == status.PathStatus
		if broken {
			s.refused++
		}
		s.mu.Unlock()
		if broken {
			http.Error(w, "broken on purpose", http.StatusServiceUnavailable)
			return
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *site) traps() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.trapped...)
}

// chromium runs the browser on url with extra arguments and returns its
// standard output.
func chromium(t *testing.T, bin, url string, extra ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	args := append([]string{
		"--headless",
		"--no-sandbox", // as root and in containers; the page is our own
		"--disable-gpu",
		"--no-first-run",
		"--no-default-browser-check",
		"--disable-extensions",
		"--disable-background-networking",
		"--disable-component-update",
		"--disable-sync",
		"--disable-crash-reporter",
		"--user-data-dir=" + t.TempDir(),
		"--virtual-time-budget=" + strconv.FormatInt(virtualBudget.Milliseconds(), 10),
	}, extra...)
	args = append(args, url)
	cmd := exec.CommandContext(ctx, bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// Chromium's helpers (zygote, renderer) join its process group, so
	// that the whole group can be killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	err := cmd.Run()
	if cmd.Process != nil {
		// Helpers left behind by a browser that exited (normally none).
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			err = fmt.Errorf("%w (killed after %v)", err, runTimeout)
		}
		t.Fatalf("chromium %s: %v\nstderr:\n%s", strings.Join(extra, " "), err, stderr.String())
	}
	t.Logf("chromium %s: %v", strings.Join(extra, " "), time.Since(start).Round(time.Millisecond))
	return stdout.String()
}

// dumpDOM loads the page and returns the DOM after virtualBudget.
func dumpDOM(t *testing.T, bin string, s *site) string {
	t.Helper()
	dom := chromium(t, bin, s.URL+"/", "--dump-dom")
	if !strings.Contains(dom, "</html>") {
		t.Fatalf("no DOM dumped:\n%s", dom)
	}
	return dom
}

var t0 = time.Now().Add(-2 * time.Hour).UTC()

func ptr(v uint64) *uint64 { return &v }

// evil is markup in names from the network. Were it parsed as HTML, the
// image would load /pwned-img (img-src 'self' allows it) and its onerror
// handler, or the script, would run.
const evil = `<img src="/pwned-img" onerror="fetch('/pwned-onerror')"><script>fetch('/pwned-script')</script>`

func snapshotA() status.Snapshot {
	return status.Snapshot{
		Version: "v9.8.7-test",
		Started: t0,
		Cards: []status.Card{
			{
				ID:         1,
				Identities: map[string]string{"ATR": "3b9f96801fc78031e073fe211b575352435653494da3", "EID": "89049032123451234512345678901235", "ICCID": "8949440000001155314"},
				State:      status.StateReady, Agent: "pi-lab-1", AgentVersion: "v9.8.7", Reader: "Gemalto PC Twin Reader 00 00",
				RemoteAddr: "192.0.2.10:40001", ConnectedSince: t0.Add(time.Minute), APDUs: 42,
			},
			{
				ID:         2,
				Identities: map[string]string{"ATR": "3b00", "ICCID": "8988211000000123456"},
				State:      status.StateInit, Agent: evil, Reader: evil,
				RemoteAddr: "198.51.100.7:51000", ConnectedSince: t0.Add(time.Hour),
			},
		},
	}
}

// snapshotB is A a moment later: card 1 selected by a user, another card
// arrived.
func snapshotB() status.Snapshot {
	s := snapshotA()
	s.Cards = append([]status.Card(nil), s.Cards...)
	s.Cards[0].State, s.Cards[0].User, s.Cards[0].APDUs = status.StateAssociated, ptr(5), 4711
	s.Cards = append(s.Cards, status.Card{
		ID: 3, Identities: map[string]string{"ATR": "3b8f", "ICCID": "8901000000000000077"}, State: status.StateReady,
		Agent: "pi-lab-2", Reader: "Identiv uTrust 3700 F", RemoteAddr: "192.0.2.11:40000", ConnectedSince: t0.Add(2 * time.Hour),
	})
	s.Users = []status.User{{ID: 5, RemoteAddr: "127.0.0.1:60000", ConnectedSince: t0.Add(time.Hour), Card: ptr(1)}}
	s.Conflicts = []status.Conflict{{Time: t0.Add(time.Hour), Identity: "ICCID", Value: "8901000000000000077", Agent: "rogue-pi",
		Reader: "r0", RemoteAddr: "198.51.100.9:5000", ListedAgent: "pi-lab-2", ListedRemoteAddr: "192.0.2.11:40000"}}
	return s
}

// rowRE finds a card's row: its data-card and data-state attributes.
var rowRE = regexp.MustCompile(`<tr data-card="(\d+)" data-state="([a-z]+)">`)

func cardStates(dom string) map[string]string {
	states := map[string]string{}
	for _, m := range rowRE.FindAllStringSubmatch(dom, -1) {
		states[m[1]] = m[2]
	}
	return states
}

func updates(t *testing.T, dom string) int {
	t.Helper()
	m := regexp.MustCompile(`<body data-updates="(\d+)"`).FindStringSubmatch(dom)
	if m == nil {
		t.Fatalf("the page never rendered a status (no data-updates on body):\n%s", dom)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func mustContain(t *testing.T, dom string, parts ...string) {
	t.Helper()
	for _, p := range parts {
		if !strings.Contains(dom, p) {
			t.Errorf("the page does not show %q", p)
		}
	}
}

// TestPageRenders loads the page once, checks what it shows, then
// changes the Source and loads it again.
func TestPageRenders(t *testing.T) {
	bin := findChromium(t)
	s := newSite(t, snapshotA())
	dom := dumpDOM(t, bin, s)
	if updates(t, dom) < 1 {
		t.Fatal("no update rendered")
	}
	if got := cardStates(dom); len(got) != 2 || got["1"] != "ready" || got["2"] != "init" {
		t.Errorf("card rows %v, want 1 ready and 2 init", got)
	}
	mustContain(t, dom,
		"version v9.8.7-test",
		"8949440000001155314", "89049032123451234512345678901235", "3b9f96801fc78031e073fe211b575352435653494da3",
		"pi-lab-1", "Gemalto PC Twin Reader 00 00", "192.0.2.10:40001",
		`<span class="state state-ready">ready</span>`,
		"No users connected.",
		`data-state="live"`,
	)
	if strings.Contains(dom, "No cards connected.") {
		t.Error("the card table says it is empty")
	}
	if !strings.Contains(dom, `<section id="conflicts-section" hidden="">`) {
		t.Error("the refused duplicate cards are shown although there are none")
	}
	if n := s.src.count(); n < 2 {
		t.Errorf("the page fetched the status %d times in %v of virtual time, want at least 2", n, virtualBudget)
	}

	// The Source changes; a new load shows the change.
	s.src.set(snapshotB())
	dom = dumpDOM(t, bin, s)
	if got := cardStates(dom); len(got) != 3 || got["1"] != "associated" || got["3"] != "ready" {
		t.Errorf("after the change: card rows %v, want 1 associated, 2 init, 3 ready", got)
	}
	mustContain(t, dom, "pi-lab-2", "127.0.0.1:60000", "4711",
		`<section id="conflicts-section">`, "ICCID 8901000000000000077", "rogue-pi", "198.51.100.9:5000")
}

// TestLiveUpdate checks the polling: the first request gets snapshot A,
// later ones B, all within one page load.
func TestLiveUpdate(t *testing.T) {
	bin := findChromium(t)
	s := newSite(t, snapshotA(), snapshotB())
	dom := dumpDOM(t, bin, s)
	if n := updates(t, dom); n < 2 {
		t.Fatalf("%d updates rendered, want at least 2 (the page does not poll)", n)
	}
	if got := cardStates(dom); len(got) != 3 || got["1"] != "associated" || got["3"] != "ready" {
		t.Errorf("card rows %v, want the second snapshot's: 1 associated, 2 init, 3 ready", got)
	}
	mustContain(t, dom, "pi-lab-2", "Identiv uTrust 3700 F", "127.0.0.1:60000", "4711")
	if strings.Contains(dom, "No users connected.") {
		t.Error("the user table still shows the first snapshot")
	}
}

// TestMarkupShownAsText checks that markup in names from the network is
// shown as text: Chromium serialises it escaped, no element is made
// from it, and nothing it would load or run reaches the server.
func TestMarkupShownAsText(t *testing.T) {
	bin := findChromium(t)
	s := newSite(t, snapshotA())
	dom := dumpDOM(t, bin, s)
	escaped := `&lt;img src="/pwned-img" onerror="fetch('/pwned-onerror')"&gt;&lt;script&gt;fetch('/pwned-script')&lt;/script&gt;`
	if n := strings.Count(dom, escaped); n < 3 { // agent and reader cells, agents table
		t.Errorf("the malicious name is shown as text %d times, want at least 3", n)
	}
	if strings.Contains(dom, "<img") {
		t.Error("the page contains an <img> element: markup from a name was parsed")
	}
	if n := strings.Count(dom, "<script"); n != 1 {
		t.Errorf("%d <script> elements, want 1 (static/app.js)", n)
	}
	if traps := s.traps(); len(traps) > 0 {
		t.Errorf("injected markup made requests: %v", traps)
	}
}

// TestOffline checks that the page says so when the status cannot be
// fetched, and keeps polling.
func TestOffline(t *testing.T) {
	bin := findChromium(t)
	s := newSite(t, snapshotA())
	s.mu.Lock()
	s.broken = true
	s.mu.Unlock()
	dom := dumpDOM(t, bin, s)
	mustContain(t, dom, `data-state="offline"`, "offline: HTTP 503 · retrying")
	if strings.Contains(dom, "data-updates") {
		t.Error("the page rendered a status it could not fetch")
	}
	s.mu.Lock()
	refused := s.refused
	s.mu.Unlock()
	if refused < 2 {
		t.Errorf("the page asked %d times, want at least 2 (it must keep polling after a failure)", refused)
	}
}

// TestScreenshot renders the page to a PNG (kept at WSRC_SCREENSHOT when
// set) and checks that it is a real image of the window's size.
func TestScreenshot(t *testing.T) {
	bin := findChromium(t)
	s := newSite(t, snapshotB())
	path := os.Getenv("WSRC_SCREENSHOT")
	if path == "" {
		path = filepath.Join(t.TempDir(), "status.png")
	}
	chromium(t, bin, s.URL+"/", "--screenshot="+path, "--window-size=1400,1300", "--hide-scrollbars")
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	defer f.Close()
	cfg, err := png.DecodeConfig(f)
	if err != nil {
		t.Fatalf("screenshot %s: %v", path, err)
	}
	if cfg.Width != 1400 || cfg.Height != 1300 {
		t.Errorf("screenshot is %dx%d, want 1400x1300", cfg.Width, cfg.Height)
	}
	t.Logf("screenshot: %s", path)
}
