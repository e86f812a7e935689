// Package status is wsrc-server's operator view: a JSON API, a live web
// page, Prometheus metrics and health checks, served by one http.Handler
// on a listener of its own (loopback by default; server/daemon creates
// it).
//
// Place in the data flow: the relay (package server) never depends on
// this package's HTTP side. It implements Source, whose Snapshot copies
// what it knows right now (cards with their identities and state, users,
// uptime), and it calls the methods of Metrics as events happen
// (connections, relayed APDUs with their latency, errors). The handler
// turns snapshots into JSON and the page, and the metrics into the
// Prometheus text format:
//
//	server ──Snapshot()──► Handler ──► GET /api/v1/status (JSON)
//	                                   GET /            (page, polls the JSON)
//	server ──m.APDURelayed(d) etc.──► Metrics ──► GET /metrics
//	                                   GET /healthz, /readyz
//
// The page polls /api/v1/status every 2 s rather than holding a
// Server-Sent Events stream: a poll is a short request that needs no
// goroutine, no per-viewer state and no special case in the server's
// orderly shutdown (http.Server.Shutdown waits for active requests, and
// an event stream never ends by itself), it passes any proxy, and a
// snapshot of a relay with a few hundred cards is a few KiB. Two seconds
// is live enough for people watching cards come and go.
//
// Everything shown comes from the network (agent and reader names from
// hello messages): the page builds its DOM with textContent only, never
// HTML strings, and is served with a Content-Security-Policy that allows
// no inline script, so a card named "<script>…" is shown, not run.
//
// The status listener reveals card identities and peer addresses
// whatever server.Config.ShowRemoteAddr says: it is meant for operators
// and should stay on loopback or behind access control. The handler
// itself checks neither; server/daemon puts a guard in front of it
// that, on loopback, refuses Host headers other than localhost and
// loopback addresses (DNS rebinding) and, elsewhere, asks for an admin
// user's credentials (docs/security.md).
package status
