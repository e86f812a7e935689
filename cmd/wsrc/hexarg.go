package main

import (
	"fmt"
	"strings"

	"github.com/wsrc-go/wsrc/client"
)

// parseAPDU parses a command APDU written in hex, as given on the command
// line or typed at the shell: digits of either case, with spaces, tabs or
// colons allowed between bytes ("00 a4 00 04", "00:A4:00:04"), never inside
// one. Error positions count characters from 1.
func parseAPDU(s string) ([]byte, error) {
	out := make([]byte, 0, len(s)/2)
	var hi byte
	half := false // a first nibble is pending in hi
	digits, pos := 0, 0
	for _, r := range s {
		pos++
		switch {
		case r == ' ' || r == '\t' || r == ':':
			if half {
				return nil, fmt.Errorf("separator %q splits a byte at character %d", r, pos)
			}
			continue
		case r >= '0' && r <= '9', r >= 'a' && r <= 'f', r >= 'A' && r <= 'F':
		default:
			return nil, fmt.Errorf("%q at character %d is not a hex digit", r, pos)
		}
		digits++
		n := nibble(byte(r))
		if !half {
			hi, half = n, true
			continue
		}
		out = append(out, hi<<4|n)
		half = false
	}
	switch {
	case digits == 0:
		return nil, fmt.Errorf("empty APDU")
	case half:
		return nil, fmt.Errorf("odd number of hex digits (%d)", digits)
	case len(out) < 4:
		return nil, fmt.Errorf("too short: %d bytes, an APDU has at least 4 (CLA INS P1 P2)", len(out))
	case len(out) > client.MaxCommandLen:
		return nil, fmt.Errorf("too long: %d bytes, an APDU has at most %d", len(out), client.MaxCommandLen)
	}
	return out, nil
}

func nibble(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c >= 'a':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}

// parseHexID normalises a hex identity given on the command line (an ATR):
// separators removed, lower case. It only checks the digits.
func parseHexID(s string) (string, error) {
	var b strings.Builder
	pos := 0
	for _, r := range s {
		pos++
		switch {
		case r == ' ' || r == '\t' || r == ':':
		case r >= '0' && r <= '9', r >= 'a' && r <= 'f':
			b.WriteRune(r)
		case r >= 'A' && r <= 'F':
			b.WriteRune(r + 'a' - 'A')
		default:
			return "", fmt.Errorf("%q at character %d is not a hex digit", r, pos)
		}
	}
	if b.Len() == 0 || b.Len()%2 != 0 {
		return "", fmt.Errorf("want an even, non-zero number of hex digits, got %d", b.Len())
	}
	return b.String(), nil
}
