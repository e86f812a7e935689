package daemon

import (
	"bufio"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"time"

	"golang.org/x/term"

	"github.com/wsrc-go/wsrc/internal/auth"
	"github.com/wsrc-go/wsrc/internal/status"
)

// checkConfig validates the configuration exactly as a start would
// (file, environment, flags) and prints OK with a summary, or the errors.
func checkConfig(args []string, std stdio) int {
	o, explicit, err := parseFlags(args, std.err, lookupEnv)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintln(std.err, "wsrc-server check-config:", err)
		return exitUsage
	}
	s, err := loadSettings(o, explicit)
	if err != nil {
		fmt.Fprintln(std.err, err)
		return exitFailure
	}
	file := s.configPath
	if file == "" {
		file = "no configuration file (" + o.configPath + " is missing): defaults and flags"
	}
	tlsMode := "no TLS (ws://)"
	switch {
	case s.tls.certFile != "":
		tlsMode = "TLS from " + s.tls.certFile
	case s.tls.acme != nil:
		tlsMode = "TLS from ACME for " + strings.Join(s.tls.acme.hostNames, ", ")
	}
	authMode := func(on bool, n int, what string) string {
		if on {
			if n == 1 {
				what = strings.TrimSuffix(what, "s")
			}
			return fmt.Sprintf("%d %s", n, what)
		}
		return "no authentication"
	}
	fmt.Fprintf(std.out, "OK: %s\n  user port %s:%d, %s\n  card port %s:%d, %s\n  %s\n", file,
		s.userHost, s.userPort, authMode(s.store.HasUsers(), s.store.UserCount(), "users"),
		s.cardHost, s.cardPort, authMode(s.store.HasAgents(), s.store.AgentCount(), "agents"), tlsMode)
	statusMode := "status listener off"
	if b := s.status.bind; b != "" {
		host, _, _ := net.SplitHostPort(b)
		access := "loopback only"
		switch {
		case !loopbackHost(host) && s.admins > 0:
			access = authMode(true, s.admins, "admin users")
		case !loopbackHost(host):
			access = "no authentication"
		}
		statusMode = fmt.Sprintf("status listener %s, %s", b, access)
	}
	fmt.Fprintf(std.out, "  %s\n", statusMode)
	if t := s.trace; t.enabled() {
		var sinks []string
		for _, x := range []struct {
			on   bool
			what string
		}{{t.pcap != "", "pcap " + t.pcap}, {t.dir != "", "per-card files in " + t.dir}, {t.log, "the log"}} {
			if x.on {
				sinks = append(sinks, x.what)
			}
		}
		red := "redacted"
		if t.noRedact {
			red = "NOT redacted"
		}
		fmt.Fprintf(std.out, "  APDU tracing to %s, %s\n", strings.Join(sinks, ", "), red)
	}
	return exitOK
}

// healthcheck asks the status listener's /healthz, for a container's
// health check (a distroless image has no curl): exit 0 when the server
// answers 200, 1 otherwise. It finds the listener as the server does
// (flags, environment, configuration file); a listener on every address
// is asked on loopback.
func healthcheck(args []string, std stdio) int {
	o, explicit, err := parseFlags(args, std.err, lookupEnv)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintln(std.err, "wsrc-server healthcheck:", err)
		return exitUsage
	}
	s, err := loadSettings(o, explicit)
	if err != nil {
		fmt.Fprintln(std.err, err)
		return exitUsage
	}
	if s.status.bind == "" {
		fmt.Fprintln(std.err, "wsrc-server healthcheck: the status listener is off (status.bind, --status-bind)")
		return exitUsage
	}
	host, port, _ := net.SplitHostPort(s.status.bind)
	if a, err := netip.ParseAddr(host); host == "" || host == "localhost" || err == nil && a.IsUnspecified() {
		host = "127.0.0.1"
		if err == nil && a.Is6() && !a.Is4In6() {
			host = "::1"
		}
	}
	scheme := "http"
	if !loopbackHost(host) && s.tls.enabled() {
		scheme = "https"
	}
	url := scheme + "://" + net.JoinHostPort(host, port) + status.PathHealthz
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // only whether it answers matters
	}}
	resp, err := c.Get(url)
	if err != nil {
		fmt.Fprintln(std.err, "wsrc-server healthcheck:", err)
		return exitFailure
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintln(std.err, "wsrc-server healthcheck:", url, "answered", resp.Status)
		return exitFailure
	}
	fmt.Fprintln(std.out, "ok")
	return exitOK
}

// hashPasswordWith is auth.HashPassword; tests make it cheap.
var hashPasswordWith = auth.HashPassword

// hashPassword reads a password (twice, without echo, from a terminal;
// else one line of standard input) and prints its bcrypt hash.
func hashPassword(args []string, std stdio) int {
	if len(args) > 0 {
		fmt.Fprintln(std.err, "usage: wsrc-server hash-password  (reads the password from the terminal or standard input)")
		return exitUsage
	}
	pw, err := readPassword(std)
	if err != nil {
		fmt.Fprintln(std.err, "wsrc-server hash-password:", err)
		return exitFailure
	}
	h, err := hashPasswordWith(pw)
	if err != nil {
		fmt.Fprintln(std.err, "wsrc-server hash-password:", err)
		return exitFailure
	}
	fmt.Fprintln(std.out, h)
	fmt.Fprintln(std.err, `Put it in the user's entry of the configuration: password_hash = "<the line above>"`)
	return exitOK
}

// readPassword reads the password to hash.
func readPassword(std stdio) (string, error) {
	if f, ok := std.in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(std.err, "Password: ")
		a, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(std.err)
		if err != nil {
			return "", err
		}
		fmt.Fprint(std.err, "Again: ")
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(std.err)
		if err != nil {
			return "", err
		}
		if string(a) != string(b) {
			return "", errors.New("the passwords differ")
		}
		return string(a), nil
	}
	line, err := bufio.NewReader(io.LimitReader(std.in, 4096)).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return "", errors.New("no password on standard input")
	}
	return line, nil
}

// genToken prints a new token and its hash.
func genToken(args []string, std stdio) int {
	if len(args) > 0 {
		fmt.Fprintln(std.err, "usage: wsrc-server gen-token")
		return exitUsage
	}
	tok, err := auth.GenerateToken()
	if err != nil {
		fmt.Fprintln(std.err, "wsrc-server gen-token:", err)
		return exitFailure
	}
	fmt.Fprintln(std.out, tok)
	fmt.Fprintln(std.out, auth.HashToken(tok))
	fmt.Fprintln(std.err, `Line 1 is the token: give it to the agent (or user) and keep it secret.
Line 2 is its hash: add it to token_hashes of the [[agent]] (or [[user]]) entry.
The server keeps only the hash; a lost token cannot be recovered, make a new one.`)
	return exitOK
}
