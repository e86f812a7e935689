package status

import (
	"bytes"
	"embed"
	"encoding/json"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"time"

	"github.com/wsrc-go/wsrc/internal/version"
)

// Paths the handler serves. The page refers to them relatively, so the
// handler also works behind a reverse proxy under a path prefix (with
// the prefix stripped).
const (
	PathStatus  = "/api/v1/status"
	PathMetrics = "/metrics"
	PathHealthz = "/healthz"
	PathReadyz  = "/readyz"
)

// PollInterval is how often the page fetches PathStatus (set in
// web/app.js; here for the documentation and tests).
const PollInterval = 2 * time.Second

//go:embed web
var webFS embed.FS

// pageCSP allows the page its own script, style and API only: no inline
// script (so injected markup cannot run), no framing, no form posts.
const pageCSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; " +
	"img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// Options configure NewHandler.
type Options struct {
	// Source gives the snapshots; required.
	Source Source
	// Metrics are served at PathMetrics; nil: PathMetrics is 404.
	Metrics *Metrics
	// Ready reports whether the relay is ready for connections (nil
	// error) or why not; PathReadyz answers 200 or 503 accordingly.
	// nil: ready whenever the handler serves.
	Ready func() error
	// Logger receives failures to write a response (nil: discard).
	Logger *slog.Logger
}

// handler is what NewHandler returns.
type handler struct {
	opts    Options
	started time.Time        // used when the Source gives no start time
	now     func() time.Time // the clock; a seam for tests
	log     *slog.Logger
	mux     *http.ServeMux
}

// NewHandler returns the status handler with these routes (GET and HEAD
// only; other methods get 405):
//
//	/                the live status page (HTML, polls PathStatus)
//	/static/...      the page's script and style sheet
//	/api/v1/status   the Snapshot as JSON
//	/metrics         the Prometheus metrics (when Options.Metrics is set)
//	/healthz         200 "ok" while the handler serves (container health checks)
//	/readyz          200 "ready", or 503 with Options.Ready's reason
//
// Every other path is 404. It panics when opts.Source is nil.
func NewHandler(opts Options) http.Handler {
	return newHandler(opts, time.Now)
}

func newHandler(opts Options, now func() time.Time) *handler {
	if opts.Source == nil {
		panic("status.NewHandler: Options.Source is nil")
	}
	h := &handler{opts: opts, started: now(), now: now, log: opts.Logger, mux: http.NewServeMux()}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	static, err := fs.Sub(webFS, "web/static")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	h.mux.HandleFunc("GET /{$}", h.page)
	files := http.StripPrefix("/static/", http.FileServerFS(static))
	h.mux.HandleFunc("GET /static/{file}", func(w http.ResponseWriter, r *http.Request) {
		files.ServeHTTP(w, r) // one level of files: no directory listings
	})
	h.mux.HandleFunc("GET "+PathStatus, h.status)
	h.mux.HandleFunc("GET "+PathHealthz, h.healthz)
	h.mux.HandleFunc("GET "+PathReadyz, h.readyz)
	if opts.Metrics != nil {
		h.mux.Handle("GET "+PathMetrics, opts.Metrics.Handler())
	}
	return h
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Referrer-Policy", "no-referrer")
	h.mux.ServeHTTP(w, r)
}

// page serves index.html.
func (h *handler) page(w http.ResponseWriter, _ *http.Request) {
	page, err := webFS.ReadFile("web/index.html")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	hdr := w.Header()
	hdr.Set("Content-Type", "text/html; charset=utf-8")
	hdr.Set("Content-Security-Policy", pageCSP)
	hdr.Set("Cache-Control", "no-cache")
	h.write(w, page)
}

// Snapshot returns the Source's snapshot completed and normalised as
// PathStatus serves it.
func (h *handler) snapshot() Snapshot {
	s := h.opts.Source.Snapshot()
	now := h.now()
	if s.Version == "" {
		s.Version = version.Version
	}
	if s.Started.IsZero() {
		s.Started = h.started
	}
	s.Time, s.Started = now.UTC(), s.Started.UTC()
	s.UptimeSeconds = int64(now.Sub(s.Started) / time.Second)
	if s.Cards == nil {
		s.Cards = []Card{}
	}
	if s.Users == nil {
		s.Users = []User{}
	}
	if s.Conflicts == nil {
		s.Conflicts = []Conflict{}
	}
	for i := range s.Conflicts {
		s.Conflicts[i].Time = s.Conflicts[i].Time.UTC()
	}
	for i := range s.Cards {
		c := &s.Cards[i]
		if c.Identities == nil {
			c.Identities = map[string]string{}
		}
		c.ConnectedSince = c.ConnectedSince.UTC()
	}
	for i := range s.Users {
		s.Users[i].ConnectedSince = s.Users[i].ConnectedSince.UTC()
	}
	if s.Agents == nil {
		s.Agents = AgentsFromCards(s.Cards)
	}
	for i := range s.Agents {
		a := &s.Agents[i]
		if a.Cards == nil {
			a.Cards = []uint64{}
		}
		if a.Readers == nil {
			a.Readers = []string{}
		}
		a.ConnectedSince = a.ConnectedSince.UTC()
	}
	return s
}

// status serves the snapshot as JSON. encoding/json escapes <, > and &,
// so the output is inert even where it is mistaken for HTML.
func (h *handler) status(w http.ResponseWriter, _ *http.Request) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	if err := enc.Encode(h.snapshot()); err != nil {
		// Only unencodable values (none in Snapshot) get here.
		h.log.Error("encoding status", "err", err)
		http.Error(w, "encoding status: "+err.Error(), http.StatusInternalServerError)
		return
	}
	hdr := w.Header()
	hdr.Set("Content-Type", "application/json; charset=utf-8")
	hdr.Set("Cache-Control", "no-store")
	h.write(w, buf.Bytes())
}

func (h *handler) healthz(w http.ResponseWriter, _ *http.Request) {
	plain(w)
	h.write(w, []byte("ok\n"))
}

func (h *handler) readyz(w http.ResponseWriter, _ *http.Request) {
	plain(w)
	if h.opts.Ready != nil {
		if err := h.opts.Ready(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			h.write(w, []byte("not ready: "+err.Error()+"\n"))
			return
		}
	}
	h.write(w, []byte("ready\n"))
}

func plain(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
}

// write sends a response body; a client that went away is only logged.
func (h *handler) write(w io.Writer, b []byte) {
	if _, err := w.Write(b); err != nil {
		h.log.Debug("writing status response", "err", err)
	}
}
