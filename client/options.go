package client

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// DefaultRequestTimeout is how long a request waits for its reply unless
// [WithRequestTimeout] says otherwise. It is a backstop for a server or
// network that has gone silent, longer than our server's own card timeout
// (120 s by default), so that a slow card (key generation, eUICC profile
// download) is reported by the server with its precise error first.
const DefaultRequestTimeout = 150 * time.Second

// closeWait is how long Close waits for the server to answer its close
// frame before it drops the connection.
const closeWait = 2 * time.Second

// Option configures Dial.
type Option func(*config)

type config struct {
	header     http.Header
	user, pass string
	basicAuth  bool
	tls        *tls.Config
	timeout    time.Duration
	readLimit  int64
	logger     *slog.Logger
	netDial    func(ctx context.Context, network, addr string) (net.Conn, error)
	notice     func(message string)
}

func newConfig(opts []Option) *config {
	c := &config{
		header:    make(http.Header),
		timeout:   DefaultRequestTimeout,
		readLimit: DefaultReadLimit,
	}
	for _, o := range opts {
		o(c)
	}
	if c.logger == nil {
		c.logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// WithHeader adds HTTP headers to the WebSocket upgrade request (for
// example a bearer token for a server behind a reverse proxy). It may be
// given more than once; values add up.
func WithHeader(h http.Header) Option {
	return func(c *config) {
		for k, vs := range h {
			for _, v := range vs {
				c.header.Add(k, v)
			}
		}
	}
}

// WithBasicAuth sends HTTP basic authentication with the upgrade request.
// A user name and password in the URL (ws://user:pass@host:4220/) have the
// same effect; this option takes precedence over them.
func WithBasicAuth(user, password string) Option {
	return func(c *config) { c.user, c.pass, c.basicAuth = user, password, true }
}

// WithTLSConfig sets the TLS configuration for wss:// URLs (custom CA,
// client certificates). The default is Go's, verifying against the system
// roots.
func WithTLSConfig(cfg *tls.Config) Option {
	return func(c *config) { c.tls = cfg }
}

// WithRequestTimeout bounds how long each request (including the hello
// exchange in Dial) waits for its reply; d <= 0 means
// [DefaultRequestTimeout]. When it expires the request fails with an error
// wrapping [ErrTimeout] and the connection is closed.
func WithRequestTimeout(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.timeout = d
		}
	}
}

// DefaultReadLimit is the largest frame a Client accepts unless
// WithReadLimit says otherwise. It is far above what any other message
// needs (protocol.MaxFrameSize) so that list_cards_ack fits with every
// card a server can hold: wsrc-server bounds each card's entry (ATR,
// identities, agent and reader names; about 2 KiB at worst, 300 bytes
// typically) and the cards (10 000 by default). Narrow long lists with
// ListCardsWhere instead of raising it.
const DefaultReadLimit = 64 << 20

// WithReadLimit sets the largest frame accepted from the server, in bytes;
// n <= 0 means [DefaultReadLimit]. A larger frame closes the connection
// with a [ProtocolError].
func WithReadLimit(n int64) Option {
	return func(c *config) {
		if n > 0 {
			c.readLimit = n
		}
	}
}

// WithLogger logs every frame sent and received at Debug level, and
// connection events at Info/Warn. The default logs nothing.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) { c.logger = l }
}

// WithNetDialContext replaces the function that opens the TCP connection
// (an SSH tunnel, a SOCKS proxy, an in-memory pipe in tests). The default
// is a net.Dialer honouring the HTTP proxy environment variables.
func WithNetDialContext(dial func(ctx context.Context, network, addr string) (net.Conn, error)) Option {
	return func(c *config) { c.netDial = dial }
}

// WithNoticeHandler is called with the text of an `error` message that the
// server sends while no request is outstanding (a pySim-compatible server
// sends none; ours may tell that the selected card went away). Such
// messages are otherwise logged and dropped. The handler runs on the
// Client's reader goroutine and must not call the Client.
func WithNoticeHandler(f func(message string)) Option {
	return func(c *config) { c.notice = f }
}
