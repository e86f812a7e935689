package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/term"

	"github.com/wsrc-go/wsrc/internal/auth"
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
