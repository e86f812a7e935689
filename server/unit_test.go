package server

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/wsrc-go/wsrc/protocol"
)

func TestRemoteAddr(t *testing.T) {
	for in, want := range map[string]protocol.RemoteAddr{
		"127.0.0.1:37586":  {IP: "127.0.0.1", Port: 37586},
		"[::1]:4221":       {IP: "::1", Port: 4221},
		"[fe80::1%lo]:80":  {IP: "fe80::1%lo", Port: 80},
		"pipe":             {IP: "pipe"},
		"10.0.0.1:notport": {IP: "10.0.0.1"},
	} {
		if got := remoteAddr(in); got != want {
			t.Errorf("remoteAddr(%q) = %+v, want %+v", in, got, want)
		}
	}
}

func TestCloseReason(t *testing.T) {
	long := strings.Repeat("é", 100) // 200 bytes
	for _, in := range []string{"short", long, "bad \xff utf-8", strings.Repeat("x", 200)} {
		got := closeReason(in)
		if len(got) > 123 || !utf8.ValidString(got) {
			t.Errorf("closeReason(%q) = %q (%d bytes)", in, got, len(got))
		}
	}
	if closeReason("short") != "short" {
		t.Error("short reason changed")
	}
}

func TestIdentityMatching(t *testing.T) {
	for in, want := range map[string]string{"iccid": "ICCID", "Eid": "EID", "ATR": "ATR", "imsi": "IMSI", "foo": "", "": ""} {
		if got := identityKey(in); got != want {
			t.Errorf("identityKey(%q) = %q, want %q", in, got, want)
		}
	}
	cases := []struct{ key, a, b string }{
		{"ICCID", "8949440000001155314", "8949440000001155314F"},
		{"ICCID", "8949440000001155314", "8949440000001155314ff"},
		{"EID", "89049032123451234512345678901235", "89049032123451234512345678901235"},
		{"ATR", "3b9f96801fc78031e073fe211b575352435653494da3", "3B9F96801FC78031E073FE211B575352435653494DA3"},
	}
	for _, c := range cases {
		if normalizeID(c.key, c.a) != normalizeID(c.key, c.b) {
			t.Errorf("%s %s and %s do not match", c.key, c.a, c.b)
		}
	}
	// The f padding counts only for ICCIDs.
	if normalizeID("ATR", "3b0f") == normalizeID("ATR", "3b0") {
		t.Error("ATR f stripped")
	}
}
