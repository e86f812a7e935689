// Package version holds the build's version string, set at link time with
// -ldflags "-X github.com/wsrc-go/wsrc/internal/version.Version=...".
package version

// Version is the software version; "dev" for builds outside the Makefile.
var Version = "dev"
