package qemu

import (
	"slices"
	"strings"
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
