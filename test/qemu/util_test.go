package qemu

import (
	"slices"
	"strings"
	"testing"
)

func contains(lines []string, want string) bool { return slices.Contains(lines, want) }

// value returns the rest of the first line that starts with prefix.
func value(lines []string, prefix string) string {
	for _, l := range lines {
		if v, ok := strings.CutPrefix(l, prefix); ok {
			return v
		}
	}
	return ""
}

func TestCCIDBackendReady(t *testing.T) {
	for _, tt := range []struct {
		help string
		want bool
	}{
		{"Backends:\n  sim    simulated\n  ccid   USB CCID readers   [not built in yet]\n", false},
		{"Backends:\n  sim    simulated\n  ccid   USB CCID readers, directly over libusb\n", true},
		{"no backends listed", true},
	} {
		if got := ccidBackendReady(tt.help); got != tt.want {
			t.Errorf("ccidBackendReady(%q) = %v, want %v", tt.help, got, tt.want)
		}
	}
}
