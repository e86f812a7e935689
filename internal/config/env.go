package config

import (
	"flag"
	"fmt"
	"strings"
)

// EnvName is the environment variable that stands in for a flag:
// prefix, then the flag name in upper case with '-' as '_'
// (EnvName("WSRC_SERVER_", "user-bind-host") = "WSRC_SERVER_USER_BIND_HOST").
func EnvName(prefix, flagName string) string {
	return prefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// FlagsFromEnv sets each flag of fs that the command line did not set
// from its environment variable (EnvName), if that is set. Call it after
// fs.Parse; lookup is os.LookupEnv (a parameter for tests). An invalid
// value is an error naming the variable. Variables with the prefix that
// match no flag are ignored (WSRC_SERVER_ARGS, for instance, is for the
// systemd unit's command line).
func FlagsFromEnv(fs *flag.FlagSet, prefix string, lookup func(string) (string, bool)) error {
	explicit := Explicit(fs)
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if err != nil || explicit[f.Name] {
			return
		}
		name := EnvName(prefix, f.Name)
		v, ok := lookup(name)
		if !ok {
			return
		}
		if serr := fs.Set(f.Name, v); serr != nil {
			err = fmt.Errorf("environment variable %s=%q (for --%s): %w", name, v, f.Name, serr)
		}
	})
	return err
}

// Explicit returns the names of the flags set on the command line or by
// FlagsFromEnv: those override the configuration file.
func Explicit(fs *flag.FlagSet) map[string]bool {
	m := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { m[f.Name] = true })
	return m
}
