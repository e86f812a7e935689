package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/wsrc-go/wsrc/agent"
	"github.com/wsrc-go/wsrc/internal/config"
)

// defaultConfigPath is read when --config is not given; its absence is
// not an error. Tests set it to "" (no file).
var defaultConfigPath = "/etc/wsrc/agent.toml"

// envPrefix names the environment variables that stand in for flags:
// WSRC_AGENT_SERVER for --server, and so on (config.EnvName).
const envPrefix = "WSRC_AGENT_"

// envToken is the environment variable with the agent's token itself;
// there is no --token flag, since a command line is visible to every
// user of the machine.
const envToken = envPrefix + "TOKEN"

// credentialName is the systemd credential read as the token when nothing
// else names one: LoadCredential=agent-token:/etc/wsrc/agent.token in the
// unit makes $CREDENTIALS_DIRECTORY/agent-token.
const credentialName = "agent-token"

// maxTokenLen is the longest token the server accepts.
const maxTokenLen = 512

// fileConfig is the configuration file, /etc/wsrc/agent.toml. Each key
// is the flag of the same name with '_' for '-' (tls.* are the --tls-*
// flags); docs/examples/agent.toml shows them all.
type fileConfig struct {
	Server         string   `toml:"server"`
	AgentName      string   `toml:"agent_name"`
	Token          string   `toml:"token"`
	TokenFile      string   `toml:"token_file"`
	Backend        string   `toml:"backend"`
	Sim            int      `toml:"sim"`
	SimProtocol    string   `toml:"sim_protocol"`
	SimGetResponse bool     `toml:"sim_getresponse"`
	LogLevel       string   `toml:"log_level"`
	ReaderInclude  []string `toml:"reader_include"`
	ReaderExclude  []string `toml:"reader_exclude"`
	PCSCShared     bool     `toml:"pcsc_shared"`
	TLS            struct {
		CAFile    string   `toml:"ca_file"`
		PinSHA256 []string `toml:"pin_sha256"`
		CertFile  string   `toml:"cert_file"`
		KeyFile   string   `toml:"key_file"`
	} `toml:"tls"`
}

// fileSetting ties a flag to its key in the file and copies the file's
// value into the options.
type fileSetting struct {
	flag, key string
	apply     func(o *options, f *fileConfig)
}

var fileSettings = []fileSetting{
	{"server", "server", func(o *options, f *fileConfig) { o.server = f.Server }},
	{"agent-name", "agent_name", func(o *options, f *fileConfig) { o.agentName = f.AgentName }},
	{"token-file", "token_file", func(o *options, f *fileConfig) { o.tokenFile = f.TokenFile }},
	{"backend", "backend", func(o *options, f *fileConfig) { o.backend = f.Backend }},
	{"sim", "sim", func(o *options, f *fileConfig) { o.sim, o.simSet = f.Sim, true }},
	{"sim-protocol", "sim_protocol", func(o *options, f *fileConfig) { o.simProtocol = f.SimProtocol }},
	{"sim-getresponse", "sim_getresponse", func(o *options, f *fileConfig) { o.simGetResponse = f.SimGetResponse }},
	{"log-level", "log_level", func(o *options, f *fileConfig) { o.logLevel = f.LogLevel }},
	{"reader-include", "reader_include", func(o *options, f *fileConfig) { o.readerInclude = f.ReaderInclude }},
	{"reader-exclude", "reader_exclude", func(o *options, f *fileConfig) { o.readerExclude = f.ReaderExclude }},
	{"pcsc-shared", "pcsc_shared", func(o *options, f *fileConfig) { o.pcscShared = f.PCSCShared }},
	{"tls-ca-file", "tls.ca_file", func(o *options, f *fileConfig) { o.tls.CAFile = f.TLS.CAFile }},
	{"tls-pin-sha256", "tls.pin_sha256", func(o *options, f *fileConfig) { o.tls.PinSHA256 = f.TLS.PinSHA256 }},
	{"tls-cert-file", "tls.cert_file", func(o *options, f *fileConfig) { o.tls.CertFile = f.TLS.CertFile }},
	{"tls-key-file", "tls.key_file", func(o *options, f *fileConfig) { o.tls.KeyFile = f.TLS.KeyFile }},
}

// origin is where a setting came from.
type origin int

const (
	fromDefault origin = iota
	fromFile
	fromEnv
	fromFlag
)

// loadFile reads the configuration file (unless --config is "") and
// takes from it every setting that neither the command line nor the
// environment gave. A missing default file is no error; a file named by
// --config or WSRC_AGENT_CONFIG must exist.
func (o *options) loadFile() error {
	path := o.configPath
	if path == "" {
		return nil
	}
	var fc fileConfig
	f, err := config.Load(path, &fc)
	if errors.Is(err, fs.ErrNotExist) && o.origin["config"] == fromDefault {
		return nil
	}
	var ce config.Errors
	if err != nil && !errors.As(err, &ce) {
		if errors.Is(err, fs.ErrPermission) {
			err = fmt.Errorf("%w (run as root or as a member of the group that may read it, or give --config \"\" to read none)", err)
		}
		return configErrors{o.errorf("config", -1, "%v", err)} // unreadable: exit 2 too
	}
	if err != nil {
		return err
	}
	o.file = f
	o.configUsed = path
	for _, s := range fileSettings {
		if o.origin[s.flag] == fromDefault && f.IsDefined(s.key) {
			s.apply(o, &fc)
			o.origin[s.flag] = fromFile
		}
	}
	o.fileToken = fc.Token
	return nil
}

// errorf reports a bad value of flag, pointing at where it was set: the
// file's line and key (element i of a list when i >= 0), the environment
// variable, or the command-line flag.
func (o *options) errorf(flag string, i int, format string, args ...any) error {
	switch o.origin[flag] {
	case fromFile:
		key := fileKey(flag)
		if i >= 0 {
			key += fmt.Sprintf("[%d]", i)
		}
		return o.file.Errorf(key, format, args...)
	case fromEnv:
		return fmt.Errorf("%s: %s", config.EnvName(envPrefix, flag), fmt.Sprintf(format, args...))
	}
	return fmt.Errorf("--%s: %s", flag, fmt.Sprintf(format, args...))
}

func fileKey(flag string) string {
	for _, s := range fileSettings {
		if s.flag == flag {
			return s.key
		}
	}
	return flag
}

// configErrors is a list of configuration problems; each prints on its
// own line. They are usage errors: exit 2, which systemd does not retry.
type configErrors []error

func (es configErrors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// validate checks everything that can be checked before running: the
// server URL, the token, the TLS files, the log level, and the backends
// (built, not started: no reader is touched). It fills o.token, o.tlsConfig
// and o.backendList, and returns every problem found, not just the first.
// Without connect (`wsrc-agent readers`), the token and TLS files are not
// read: listing readers needs neither, nor the permission to read them.
func (o *options) validate(lookup func(string) (string, bool), connect bool) error {
	var errs configErrors
	add := func(err error) {
		if err == nil {
			return
		}
		var ce config.Errors
		if errors.As(err, &ce) {
			for _, e := range ce {
				errs = append(errs, e)
			}
			return
		}
		errs = append(errs, err)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		add(o.errorf("log-level", -1, "%q: want debug, info, warn or error", o.logLevel))
	}
	o.level.Set(level)
	u, uerr := url.Parse(o.server)
	if err := agent.CheckServerURL(o.server); err != nil {
		add(o.errorf("server", -1, "%v", err))
	}
	if connect {
		add(o.resolveToken(lookup))
		add(o.checkTLS(u, uerr == nil))
	}
	backends, err := o.backends()
	if err != nil {
		add(o.backendError(err))
	}
	o.backendList = backends
	if len(errs) > 0 {
		closeBackends(backends, o.logger())
		o.backendList = nil
		return errs
	}
	return nil
}

// backendError points a backend problem at the setting behind it.
func (o *options) backendError(err error) error {
	var be *backendErr
	if errors.As(err, &be) && be.flag != "" {
		return o.errorf(be.flag, be.index, "%s", be.msg)
	}
	return err
}

// checkTLS checks the tls settings one by one, so that each problem names
// its key, and then builds the tls.Config.
func (o *options) checkTLS(u *url.URL, parsed bool) error {
	t := o.tls
	if t.IsZero() {
		return nil
	}
	if parsed && u.Scheme == "ws" {
		flag := "tls-ca-file"
		for _, f := range []string{"tls-ca-file", "tls-pin-sha256", "tls-cert-file", "tls-key-file"} {
			if o.origin[f] != fromDefault {
				flag = f
				break
			}
		}
		return o.errorf(flag, -1, "TLS settings need a wss:// server URL, and the server is %s", u.Redacted())
	}
	var errs configErrors
	if t.CAFile != "" {
		if _, err := (agent.TLSOptions{CAFile: t.CAFile}).Config(); err != nil {
			errs = append(errs, o.errorf("tls-ca-file", -1, "%v", err))
		}
	}
	for i, p := range t.PinSHA256 {
		if _, err := agent.ParsePin(p); err != nil {
			errs = append(errs, o.errorf("tls-pin-sha256", i, "%v", err))
		}
	}
	switch {
	case t.CertFile != "" && t.KeyFile == "":
		errs = append(errs, o.errorf("tls-cert-file", -1, "a client certificate needs tls key_file (--tls-key-file) too"))
	case t.CertFile == "" && t.KeyFile != "":
		errs = append(errs, o.errorf("tls-key-file", -1, "a client key needs tls cert_file (--tls-cert-file) too"))
	case t.CertFile != "":
		if _, err := (agent.TLSOptions{CertFile: t.CertFile, KeyFile: t.KeyFile}).Config(); err != nil {
			errs = append(errs, o.errorf("tls-cert-file", -1, "%v", err))
		}
	}
	if len(errs) > 0 {
		return errs
	}
	cfg, err := t.Config()
	if err != nil {
		return err // checked piece by piece above; not expected
	}
	o.tlsConfig = cfg
	return nil
}

// resolveToken finds the agent's token. The command line's --token-file
// wins; then the environment (WSRC_AGENT_TOKEN, or WSRC_AGENT_TOKEN_FILE,
// not both); then the file (token or token_file, not both); then the
// systemd credential agent-token. No token at all is fine: the server may
// not ask for one.
func (o *options) resolveToken(lookup func(string) (string, bool)) error {
	envTok, envSet := lookup(envToken)
	switch {
	case o.origin["token-file"] == fromFlag:
		return o.readToken("token-file")
	case envSet && o.origin["token-file"] == fromEnv:
		return fmt.Errorf("%s and %s are both set: keep one", envToken, config.EnvName(envPrefix, "token-file"))
	case envSet:
		if err := checkToken(envTok); err != nil {
			return fmt.Errorf("%s: %v", envToken, err)
		}
		o.token, o.tokenFrom = envTok, envToken
		return nil
	case o.origin["token-file"] == fromEnv:
		return o.readToken("token-file")
	case o.fileToken != "" && o.origin["token-file"] == fromFile:
		return o.file.Errorf("token_file", "token and token_file are both set: keep one")
	case o.fileToken != "":
		if err := checkToken(o.fileToken); err != nil {
			return o.file.Errorf("token", "%v", err)
		}
		o.token, o.tokenFrom = o.fileToken, o.configUsed+" (token)"
		return nil
	case o.origin["token-file"] == fromFile:
		return o.readToken("token-file")
	}
	if dir, ok := lookup("CREDENTIALS_DIRECTORY"); ok {
		path := filepath.Join(dir, credentialName)
		if _, err := os.Stat(path); err == nil {
			o.tokenFile = path
			return o.readToken("token-file")
		}
	}
	return nil
}

// readToken reads the token file that flag names.
func (o *options) readToken(flag string) error {
	data, err := os.ReadFile(o.tokenFile)
	if err != nil {
		return o.errorf(flag, -1, "reading the token file: %v", err)
	}
	tok := strings.TrimSpace(string(data))
	if err := checkToken(tok); err != nil {
		return o.errorf(flag, -1, "token file %s: %v", o.tokenFile, err)
	}
	if st, err := os.Stat(o.tokenFile); err == nil && st.Mode().Perm()&0o004 != 0 {
		o.warnings = append(o.warnings, fmt.Sprintf("token file %s is readable by every user of this machine (chmod o-r)", o.tokenFile))
	}
	o.token, o.tokenFrom = tok, o.tokenFile
	return nil
}

// checkToken accepts what the server can accept: 1 to 512 visible ASCII
// characters (no spaces: it travels as a Bearer credential).
func checkToken(tok string) error {
	switch {
	case tok == "":
		return errors.New("the token is empty")
	case len(tok) > maxTokenLen:
		return fmt.Errorf("the token is longer than %d bytes", maxTokenLen)
	}
	for i := 0; i < len(tok); i++ {
		if c := tok[i]; c <= ' ' || c > '~' {
			return fmt.Errorf("the token has a character that is not visible ASCII at byte %d (spaces and line breaks inside it are not allowed)", i)
		}
	}
	return nil
}

// cleartextToken reports whether a token would travel unencrypted to
// another machine: a ws:// URL whose host is not a loopback address.
func cleartextToken(server, token string) bool {
	u, err := url.Parse(server)
	if err != nil || token == "" || u.Scheme != "ws" {
		return false
	}
	host := u.Hostname()
	if host == "localhost" {
		return false
	}
	ip := net.ParseIP(host)
	return ip == nil || !ip.IsLoopback()
}
