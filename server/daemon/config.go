package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/wsrc-go/wsrc/internal/auth"
	"github.com/wsrc-go/wsrc/internal/config"
	"github.com/wsrc-go/wsrc/protocol"
	"github.com/wsrc-go/wsrc/server"
)

// DefaultConfigPath is read when --config is not given; a missing file
// there is not an error (the defaults and flags apply).
const DefaultConfigPath = "/etc/wsrc/server.toml"

// fileConfig is the configuration file, /etc/wsrc/server.toml
// (docs/examples/server.toml is an annotated example). Every setting is
// optional; flags and WSRC_SERVER_* variables override the ones that
// have a flag.
type fileConfig struct {
	LogLevel       string   `toml:"log_level"`
	InsecureNoAuth bool     `toml:"insecure_no_auth"`
	ShowRemoteAddr bool     `toml:"show_remote_addr"`
	TrustedProxies []string `toml:"trusted_proxies"`
	UserPort       port     `toml:"user_port"`
	CardPort       port     `toml:"card_port"`
	TLS            struct {
		CertFile   string `toml:"cert_file"`
		KeyFile    string `toml:"key_file"`
		MinVersion string `toml:"min_version"`
		ACME       struct {
			HostNames    []string `toml:"host_names"`
			Email        string   `toml:"email"`
			CacheDir     string   `toml:"cache_dir"`
			DirectoryURL string   `toml:"directory_url"`
			HTTPListen   string   `toml:"http_listen"`
			AcceptTerms  bool     `toml:"accept_terms"`
		} `toml:"acme"`
	} `toml:"tls"`
	Limits struct {
		HelloTimeout      time.Duration `toml:"hello_timeout"`
		IdentifyTimeout   time.Duration `toml:"identify_timeout"`
		RequestTimeout    time.Duration `toml:"request_timeout"`
		WriteTimeout      time.Duration `toml:"write_timeout"`
		HeaderTimeout     time.Duration `toml:"header_timeout"`
		PingInterval      time.Duration `toml:"ping_interval"`
		PongTimeout       time.Duration `toml:"pong_timeout"`
		MaxMessageSize    int           `toml:"max_message_size"`
		MaxCards          int           `toml:"max_cards"`
		MaxUsers          int           `toml:"max_users"`
		MaxConnsPerAddr   int           `toml:"max_conns_per_address"`
		MaxPending        int           `toml:"max_pending"`
		MessageRate       int           `toml:"message_rate"`
		MessageBurst      int           `toml:"message_burst"`
		RateStrikes       int           `toml:"rate_strikes"`
		AuthFailureBurst  int           `toml:"auth_failure_burst"`
		AuthFailurePeriod time.Duration `toml:"auth_failure_period"`
	} `toml:"limits"`
	Status struct {
		Bind         string   `toml:"bind"`
		AllowedHosts []string `toml:"allowed_hosts"`
	} `toml:"status"`
	Trace struct {
		Pcap     string   `toml:"pcap"`
		Dir      string   `toml:"dir"`
		Log      bool     `toml:"log"`
		NoRedact bool     `toml:"no_redact"`
		Cards    []string `toml:"cards"`
		MaxSize  fileSize `toml:"max_size"`
		Keep     int      `toml:"keep"`
	} `toml:"trace"`
	Users  []fileUser  `toml:"user"`
	Agents []fileAgent `toml:"agent"`
}

// fileSize is a size in the file: an integer (bytes) or a string with a
// unit ("100M"). Decoding keeps it as written; resolve checks it, so that
// a mistake is reported with its line like any other.
type fileSize struct{ raw any }

// UnmarshalTOML implements toml.Unmarshaler.
func (f *fileSize) UnmarshalTOML(v any) error {
	f.raw = v
	return nil
}

type port struct {
	BindHost string `toml:"bind_host"`
	BindPort int    `toml:"bind_port"`
}

type fileUser struct {
	Name         string     `toml:"name"`
	PasswordHash string     `toml:"password_hash"`
	TokenHashes  []string   `toml:"token_hashes"`
	Admin        bool       `toml:"admin"`
	AllCards     bool       `toml:"all_cards"`
	Cards        []fileRule `toml:"cards"`
}

type fileAgent struct {
	Name        string     `toml:"name"`
	TokenHashes []string   `toml:"token_hashes"`
	Cards       []fileRule `toml:"cards"`
}

type fileRule struct {
	Agent  string `toml:"agent"`
	Reader string `toml:"reader"`
	ATR    string `toml:"atr"`
	ICCID  string `toml:"iccid"`
	EID    string `toml:"eid"`
}

// settings is everything the server runs with, validated.
type settings struct {
	configPath         string          // "" when no file was read
	explicit           map[string]bool // flags given (command line or environment)
	logLevel           slog.Level
	userHost, cardHost string
	userPort, cardPort int
	insecureNoAuth     bool
	headerTimeout      time.Duration
	srv                server.Config // without Auth, Observer, Tracer
	store              *auth.Store   // nil when neither users nor agents are configured
	admins             int           // users with admin = true (they may use the status listener)
	tls                tlsSettings
	status             statusSettings
	trace              traceSettings
}

// statusSettings: the status listener (status page, JSON, metrics,
// health checks).
type statusSettings struct {
	bind         string   // host:port; "" disables the listener
	allowedHosts []string // Host header names accepted besides loopback's, lower case
}

// traceSettings: APDU tracing (internal/trace); off unless pcap, dir or
// log is set.
type traceSettings struct {
	pcap, dir string
	log       bool
	noRedact  bool
	cards     []string // --trace-card: card IDs, ICCIDs or EIDs; none: every card
	maxSize   int64    // rotate a pcap file past this size; 0: never
	keep      int      // rotated files kept; 0: trace's default
}

func (t traceSettings) enabled() bool { return t.pcap != "" || t.dir != "" || t.log }

// tlsSettings: certificate files, or ACME, or neither (plain ws://).
type tlsSettings struct {
	certFile, keyFile string
	minVersion        uint16
	acme              *acmeSettings
}

func (t tlsSettings) enabled() bool { return t.certFile != "" || t.acme != nil }

type acmeSettings struct {
	hostNames    []string
	email        string
	cacheDir     string
	directoryURL string
	httpListen   string
}

// Defaults of settings that have no server.Config counterpart.
const (
	defaultHeaderTimeout = 10 * time.Second
	defaultACMECacheDir  = "/var/lib/wsrc-server/acme"
	defaultACMEHTTP      = ":80"
	// defaultStatusBind is the status listener's address: loopback, on
	// the port after pySim's two (4222 is NATS's client port).
	defaultStatusBind = "127.0.0.1:4223"
)

// flagKeys maps the flags that stand for file settings to their keys.
var flagKeys = map[string]string{
	"user-bind-host":      "user_port.bind_host",
	"user-bind-port":      "user_port.bind_port",
	"card-bind-host":      "card_port.bind_host",
	"card-bind-port":      "card_port.bind_port",
	"request-timeout":     "limits.request_timeout",
	"show-remote-addr":    "show_remote_addr",
	"log-level":           "log_level",
	"tls-cert":            "tls.cert_file",
	"tls-key":             "tls.key_file",
	"insecure-no-auth":    "insecure_no_auth",
	"status-bind":         "status.bind",
	"status-allowed-host": "status.allowed_hosts",
	"trace-pcap":          "trace.pcap",
	"trace-dir":           "trace.dir",
	"trace-log":           "trace.log",
	"trace-no-redact":     "trace.no_redact",
	"trace-card":          "trace.cards",
	"trace-max-size":      "trace.max_size",
	"trace-keep":          "trace.keep",
}

// problems collects validation errors, each attributed to a file line or
// to the flag that set the value.
type problems struct {
	file     *config.File // nil without a file
	explicit map[string]bool
	errs     config.Errors
	other    []error
}

// add reports a problem with the setting key.
func (p *problems) add(key, format string, args ...any) {
	for fl, k := range flagKeys {
		if k == key && p.explicit[fl] {
			p.other = append(p.other, fmt.Errorf("--%s (or %s): %s", fl, config.EnvName(envPrefix, fl), fmt.Sprintf(format, args...)))
			return
		}
	}
	if p.file == nil {
		p.other = append(p.other, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
		return
	}
	p.errs = append(p.errs, p.file.Errorf(key, format, args...))
}

func (p *problems) err() error {
	var all []error
	if err := p.errs.Err(); err != nil {
		all = append(all, err)
	}
	return errors.Join(append(all, p.other...)...)
}

// resolve merges the file fc (f nil when none was read) with the flags in
// o (those in explicit override it) and validates the result.
func resolve(o options, f *config.File, fc *fileConfig, explicit map[string]bool) (*settings, error) {
	p := &problems{file: f, explicit: explicit}
	s := &settings{userHost: "127.0.0.1", cardHost: "127.0.0.1", userPort: protocol.DefaultUserPort, cardPort: protocol.DefaultCardPort}
	s.explicit = explicit
	if f != nil {
		s.configPath = f.Path
	}
	// Values: file first, then flags.
	var pick picker = func(flag string, fileSet bool, fileVal, flagVal any) any {
		if explicit[flag] || !fileSet {
			return flagVal
		}
		return fileVal
	}
	def := func(key string) bool { return f.IsDefined(key) }
	s.userHost = pick("user-bind-host", def("user_port.bind_host"), fc.UserPort.BindHost, o.userHost).(string)
	s.userPort = pick("user-bind-port", def("user_port.bind_port"), fc.UserPort.BindPort, o.userPort).(int)
	s.cardHost = pick("card-bind-host", def("card_port.bind_host"), fc.CardPort.BindHost, o.cardHost).(string)
	s.cardPort = pick("card-bind-port", def("card_port.bind_port"), fc.CardPort.BindPort, o.cardPort).(int)
	s.insecureNoAuth = pick("insecure-no-auth", def("insecure_no_auth"), fc.InsecureNoAuth, o.insecureNoAuth).(bool)
	s.srv.ShowRemoteAddr = pick("show-remote-addr", def("show_remote_addr"), fc.ShowRemoteAddr, o.showRemoteAddr).(bool)
	if ps, err := auth.ParseProxies(fc.TrustedProxies); err != nil {
		p.add("trusted_proxies", "%v (write addresses or networks: \"127.0.0.1\", \"::1\", \"10.0.0.0/8\")", err)
	} else {
		s.srv.TrustedProxies = ps
	}
	level := pick("log-level", def("log_level"), fc.LogLevel, o.logLevel).(string)
	if err := s.logLevel.UnmarshalText([]byte(level)); err != nil {
		p.add("log_level", "%q is not a log level (debug, info, warn, error)", level)
	}
	for _, pt := range []struct {
		key  string
		port int
	}{{"user_port.bind_port", s.userPort}, {"card_port.bind_port", s.cardPort}} {
		if pt.port < 0 || pt.port > 65535 {
			p.add(pt.key, "%d is not a TCP port", pt.port)
		}
	}
	s.limits(p, o, fc)
	s.tlsConfig(p, o, fc)
	s.accounts(p, fc)
	s.statusConfig(p, o, fc, pick, def)
	s.traceConfig(p, o, fc, pick, def)
	if s.store == nil || !s.store.HasUsers() {
		if !s.insecureNoAuth && !loopbackHost(s.userHost) {
			p.add("user_port.bind_host", "the user port would be open to anyone on %q: configure [[user]] accounts, bind it to loopback, or set insecure_no_auth (--insecure-no-auth)", s.userHost)
		}
	}
	if s.store == nil || !s.store.HasAgents() {
		if !s.insecureNoAuth && !loopbackHost(s.cardHost) {
			p.add("card_port.bind_host", "the card port would be open to anyone on %q: configure [[agent]] tokens, bind it to loopback, or set insecure_no_auth (--insecure-no-auth)", s.cardHost)
		}
	}
	if err := p.err(); err != nil {
		return nil, err
	}
	return s, nil
}

// picker returns a setting's value: the flag's when it was given or the
// file does not set it (fileSet), else the file's.
type picker func(flag string, fileSet bool, fileVal, flagVal any) any

// limits fills s.srv's limits from fc (and --request-timeout).
func (s *settings) limits(p *problems, o options, fc *fileConfig) {
	l := &fc.Limits
	c := &s.srv
	dur := func(key string, v time.Duration, min time.Duration, dst *time.Duration) {
		switch {
		case v == 0:
		case v < min:
			p.add("limits."+key, "%v is too short (at least %v; write durations as \"10s\", \"2m\")", v, min)
		default:
			*dst = v
		}
	}
	dur("hello_timeout", l.HelloTimeout, time.Second, &c.HelloTimeout)
	dur("identify_timeout", l.IdentifyTimeout, time.Second, &c.IdentifyTimeout)
	reqTimeout := l.RequestTimeout
	if s.flagSet("request-timeout") || reqTimeout == 0 {
		reqTimeout = o.requestTimeout
	}
	dur("request_timeout", reqTimeout, time.Second, &c.RequestTimeout)
	dur("write_timeout", l.WriteTimeout, time.Second, &c.WriteTimeout)
	s.headerTimeout = defaultHeaderTimeout
	dur("header_timeout", l.HeaderTimeout, time.Second, &s.headerTimeout)
	dur("ping_interval", l.PingInterval, time.Second, &c.PingInterval)
	dur("pong_timeout", l.PongTimeout, time.Second, &c.PongTimeout)
	dur("auth_failure_period", l.AuthFailurePeriod, time.Second, &c.AuthFailurePer)
	count := func(key string, v, min, max int, dst *int) {
		switch {
		case v == 0:
		case v < min || v > max:
			p.add("limits."+key, "%d is out of range (%d to %d)", v, min, max)
		default:
			*dst = v
		}
	}
	count("max_message_size", l.MaxMessageSize, 1024, 16<<20, &c.MaxFrameSize)
	count("max_cards", l.MaxCards, 1, 1<<20, &c.MaxCards)
	count("max_users", l.MaxUsers, 1, 1<<20, &c.MaxUsers)
	count("max_conns_per_address", l.MaxConnsPerAddr, 1, 1<<20, &c.MaxConnsPerAddr)
	count("max_pending", l.MaxPending, 1, 1<<20, &c.MaxPending)
	count("message_burst", l.MessageBurst, 1, 1<<20, &c.MessageBurst)
	count("rate_strikes", l.RateStrikes, 1, 1<<20, &c.RateStrikes)
	count("auth_failure_burst", l.AuthFailureBurst, 1, 1<<20, &c.AuthFailureBurst)
	c.MessageRate = server.DefaultMessageRate
	switch r := l.MessageRate; {
	case p.file.IsDefined("limits.message_rate") && r == 0:
		c.MessageRate = -1 // 0 in the file: no limit
	case r < 0 || r > 1<<20:
		p.add("limits.message_rate", "%d is out of range (0 for no limit, up to %d)", r, 1<<20)
	case r > 0:
		c.MessageRate = float64(r)
	}
	if err := c.Validate(); err != nil {
		key := "limits.pong_timeout"
		if !p.file.IsDefined(key) {
			key = "limits.ping_interval"
		}
		p.add(key, "%v", err)
	}
}

// flagSet reports whether a flag was given; set by resolve's caller.
func (s *settings) flagSet(name string) bool { return s.explicit[name] }

// tlsConfig checks the [tls] settings.
func (s *settings) tlsConfig(p *problems, o options, fc *fileConfig) {
	t := &fc.TLS
	cert, key := t.CertFile, t.KeyFile
	if s.flagSet("tls-cert") {
		cert = o.tlsCert
	}
	if s.flagSet("tls-key") {
		key = o.tlsKey
	}
	switch t.MinVersion {
	case "", "1.2":
		s.tls.minVersion = tlsVersion12
	case "1.3":
		s.tls.minVersion = tlsVersion13
	default:
		p.add("tls.min_version", "%q: use \"1.2\" or \"1.3\"", t.MinVersion)
	}
	a := &t.ACME
	acme := len(a.HostNames) > 0 || p.file.IsDefined("tls.acme")
	switch {
	case (cert == "") != (key == ""):
		k := "tls.key_file"
		if cert == "" {
			k = "tls.cert_file"
		}
		p.add(k, "cert_file and key_file go together: set both or neither")
	case cert != "" && acme:
		p.add("tls.acme", "use either certificate files (cert_file, key_file) or ACME, not both")
	case cert != "":
		if _, err := loadKeyPair(cert, key); err != nil {
			p.add("tls.cert_file", "%v", err)
		}
		s.tls.certFile, s.tls.keyFile = cert, key
	case acme:
		s.tls.acme = s.acmeConfig(p, fc)
	}
}

func (s *settings) acmeConfig(p *problems, fc *fileConfig) *acmeSettings {
	a := &fc.TLS.ACME
	as := &acmeSettings{hostNames: a.HostNames, email: a.Email, cacheDir: a.CacheDir, directoryURL: a.DirectoryURL, httpListen: a.HTTPListen}
	if len(a.HostNames) == 0 {
		p.add("tls.acme.host_names", "ACME needs the public host name(s) to get a certificate for")
	}
	for i, h := range a.HostNames {
		if err := checkHostName(h); err != nil {
			p.add(fmt.Sprintf("tls.acme.host_names[%d]", i), "%v", err)
		}
	}
	if !a.AcceptTerms {
		p.add("tls.acme.accept_terms", "set accept_terms = true to accept the ACME CA's terms of service (Let's Encrypt's by default)")
	}
	if as.cacheDir == "" {
		as.cacheDir = defaultACMECacheDir
	}
	if !p.file.IsDefined("tls.acme.http_listen") {
		as.httpListen = defaultACMEHTTP
	}
	if as.httpListen != "" {
		if _, _, err := net.SplitHostPort(as.httpListen); err != nil {
			p.add("tls.acme.http_listen", "%q is not host:port (e.g. \":80\"; \"\" for no HTTP-01 listener)", as.httpListen)
		}
	}
	if as.directoryURL != "" {
		u, err := url.Parse(as.directoryURL)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			p.add("tls.acme.directory_url", "%q is not an https:// URL", as.directoryURL)
		}
	}
	if as.email != "" && !strings.Contains(as.email, "@") {
		p.add("tls.acme.email", "%q is not an e-mail address", as.email)
	}
	return as
}

// checkHostName accepts a DNS name a public CA can issue for.
func checkHostName(h string) error {
	if h == "" || len(h) > 253 || strings.HasSuffix(h, ".") || !strings.Contains(h, ".") {
		return fmt.Errorf("%q is not a fully qualified host name", h)
	}
	if _, err := netip.ParseAddr(h); err == nil {
		return fmt.Errorf("%q is an IP address; ACME certificates are for host names", h)
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("%q is not a valid host name", h)
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("%q is not a valid host name", h)
			}
		}
	}
	return nil
}

// accounts builds the store from [[user]] and [[agent]]. auth.NewStore
// checks them; each mistake it finds names its account and setting,
// which become the file's line and key here.
func (s *settings) accounts(p *problems, fc *fileConfig) {
	if len(fc.Users) == 0 && len(fc.Agents) == 0 {
		return
	}
	badTokens := map[string]bool{} // accounts with a token hash that did not parse
	tokens := func(key string, hs []string) []auth.TokenHash {
		var out []auth.TokenHash
		for i, h := range hs {
			th, err := auth.ParseTokenHash(h)
			if err != nil {
				p.add(fmt.Sprintf("%s.token_hashes[%d]", key, i), "%v", err)
				badTokens[key] = true
				continue
			}
			out = append(out, th)
		}
		return out
	}
	rules := func(fr []fileRule) auth.Rules {
		var out auth.Rules
		for _, r := range fr {
			out = append(out, auth.Rule{Agent: r.Agent, Reader: r.Reader, ATR: r.ATR, ICCID: r.ICCID, EID: r.EID})
		}
		return out
	}
	bad := len(p.errs) + len(p.other)
	var users []auth.User
	admins := 0
	for i, u := range fc.Users {
		if u.Admin {
			admins++
		}
		users = append(users, auth.User{Name: u.Name, PasswordHash: u.PasswordHash, TokenHashes: tokens(fmt.Sprintf("user[%d]", i), u.TokenHashes),
			Admin: u.Admin, AllCards: u.AllCards, Cards: rules(u.Cards)})
	}
	var agents []auth.Agent
	for i, a := range fc.Agents {
		agents = append(agents, auth.Agent{Name: a.Name, TokenHashes: tokens(fmt.Sprintf("agent[%d]", i), a.TokenHashes),
			AllCards: len(a.Cards) == 0, Cards: rules(a.Cards)})
	}
	store, err := auth.NewStore(users, agents)
	for _, e := range joined(err) {
		var ae *auth.AccountError
		if !errors.As(e, &ae) {
			p.add("user", "%v", e)
			continue
		}
		account := fmt.Sprintf("%s[%d]", ae.Kind, ae.Index)
		if badTokens[account] && (ae.Field == "" || ae.Field == "token_hashes") {
			continue // its token hash did not parse: said above
		}
		key := account
		if ae.Field != "" {
			key += "." + ae.Field
		}
		p.add(key, "%v", ae.Err)
	}
	if err == nil && len(p.errs)+len(p.other) == bad {
		s.store, s.admins = store, admins
	}
}

// joined returns the errors err joins (err itself when it joins none;
// none for nil).
func joined(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// loopbackHost reports whether binding host listens on loopback only.
func loopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}
