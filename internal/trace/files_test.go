package trace

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCardFileName(t *testing.T) {
	tests := []struct{ id, iccid, eid, want string }{
		{"c1", iccid1, eid2, "eid-" + eid2 + ".pcap"},
		{"c1", iccid1, "", "iccid-" + iccid1 + ".pcap"},
		{"c1", "", "", "card-c1.pcap"},
		{"../../etc/passwd", "", "", "card-______etc_passwd.pcap"},
		{"", "", "", "card-unknown.pcap"},
		{"a/b\\c\x00d", "", "", "card-a_b_c_d.pcap"},
		{"", "89..", "", "iccid-89__.pcap"},
		{"ä", "", "", "card-_.pcap"},
		{strings.Repeat("x", 200), "", "", "card-" + strings.Repeat("x", maxNameLen) + ".pcap"},
	}
	for _, tt := range tests {
		got := cardFileName(tt.id, tt.iccid, tt.eid)
		if got != tt.want {
			t.Errorf("cardFileName(%q, %q, %q) = %q, want %q", tt.id, tt.iccid, tt.eid, got, tt.want)
		}
		if filepath.Base(got) != got {
			t.Errorf("%q leaves the directory", got)
		}
	}
}

func FuzzCardFileName(f *testing.F) {
	f.Add("c1", iccid1, eid2)
	f.Add("../x", "", "")
	f.Add("", "", "")
	f.Fuzz(func(t *testing.T, id, iccid, eid string) {
		name := cardFileName(id, iccid, eid)
		if filepath.Base(name) != name || strings.ContainsAny(name, "/\\\x00") || strings.HasPrefix(name, ".") ||
			len(name) > len("iccid-")+maxNameLen+len(".pcap") {
			t.Fatalf("unsafe name %q", name)
		}
	})
}

// packetSize is the file size of one packet with a payload of n bytes.
func packetSize(n int) int64 {
	return int64(pcapRecordHeaderLen + ipv4HdrLen + udpHdrLen + gsmtapHdrLen + n)
}

func TestRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "all.pcap")
	// SELECT MF + SW: 9 payload bytes; room for three packets per file.
	limit := pcapFileHeaderLen + 3*packetSize(9)
	tr, err := New(Options{File: path, MaxFileBytes: limit, MaxFiles: 2, ErrorLog: slog.New(&logRecorder{})})
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		tr.APDU(ev(t, "c1", "", "00a40004023f00", "", 0x9000))
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	for name, n := range map[string]int{"all.pcap": 1, "all.pcap.1": 3, "all.pcap.2": 3} {
		p := filepath.Join(dir, name)
		if got := len(readPcap(t, p)); got != n {
			t.Errorf("%s: %d packets, want %d", name, got, n)
		}
		if st, _ := os.Stat(p); st.Size() > limit {
			t.Errorf("%s: %d bytes, limit %d", name, st.Size(), limit)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "all.pcap.3")); err == nil {
		t.Error("all.pcap.3 kept with MaxFiles 2")
	}
}

func TestExistingFileRotatedAway(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "all.pcap")
	if err := os.WriteFile(path, []byte("an earlier run"), 0o600); err != nil {
		t.Fatal(err)
	}
	tr, err := New(Options{File: path, ErrorLog: slog.New(&logRecorder{})})
	if err != nil {
		t.Fatal(err)
	}
	tr.APDU(ev(t, "c1", "", "00a40004023f00", "", 0x9000))
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path + ".1"); string(b) != "an earlier run" {
		t.Errorf("all.pcap.1 = %q", b)
	}
	if n := len(readPcap(t, path)); n != 1 {
		t.Errorf("%d packets, want 1", n)
	}
}

// TestCardFilesReopened opens more per-card files than are kept open: the
// least recently used one is closed and later appended to.
func TestCardFilesReopened(t *testing.T) {
	dir := t.TempDir()
	tr, err := New(Options{Dir: dir, ErrorLog: slog.New(&logRecorder{})})
	if err != nil {
		t.Fatal(err)
	}
	for i := range maxOpenCardFiles + 1 {
		tr.APDU(ev(t, fmt.Sprint("c", i), "", "00a40004023f00", "", 0x9000))
	}
	tr.APDU(ev(t, "c0", "", "00a40004022fe2", "", 0x9000))
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(readPcap(t, filepath.Join(dir, "card-c0.pcap"))); n != 2 {
		t.Errorf("card-c0.pcap: %d packets, want 2", n)
	}
	if _, err := os.Stat(filepath.Join(dir, "card-c0.pcap.1")); err == nil {
		t.Error("a file this tracer closed cleanly was rotated instead of appended to")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != maxOpenCardFiles+1 {
		t.Errorf("%d files, want %d", len(ents), maxOpenCardFiles+1)
	}
}
