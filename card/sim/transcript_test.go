package sim

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wsrc-go/wsrc/card"
)

// step is one card-side exchange of the recording: a c_apdu and the
// r_apdu that answered it, or a reset_req.
type step struct {
	line     int
	reset    bool
	command  []byte
	response []byte // data followed by SW
}

// transcriptPath finds ../shared/protocol/transcript.md relative to the
// module root (the directory holding go.mod).
func transcriptPath(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Skip("module root (go.mod) not found; cannot locate ../shared/protocol/transcript.md")
		}
		dir = parent
	}
	p := filepath.Join(dir, "..", "shared", "protocol", "transcript.md")
	if _, err := os.Stat(p); err != nil {
		t.Skipf("recorded transcript not available (%v): skipping the replay against pySim's recording", err)
	}
	return p
}

// loadTranscript returns the card-side steps of every card socket, in order.
func loadTranscript(t *testing.T) map[string][]step {
	t.Helper()
	f, err := os.Open(transcriptPath(t))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	steps := map[string][]step{}
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		cols := strings.Split(sc.Text(), "|")
		if len(cols) < 6 {
			continue
		}
		sock, dir := strings.TrimSpace(cols[2]), strings.TrimSpace(cols[3])
		if !strings.HasPrefix(sock, "card#") {
			continue
		}
		msg := strings.Trim(strings.TrimSpace(strings.Join(cols[4:len(cols)-1], "|")), "`")
		var m struct {
			MsgType  string `json:"msg_type"`
			Command  string `json:"command"`
			Response string `json:"response"`
			SW       string `json:"sw"`
		}
		if err := json.Unmarshal([]byte(msg), &m); err != nil {
			continue // *connect* / *close* rows
		}
		ss := steps[sock]
		switch {
		case dir == "server → card" && m.MsgType == "c_apdu":
			ss = append(ss, step{line: n, command: unhex(t, m.Command)})
		case dir == "server → card" && m.MsgType == "reset_req":
			ss = append(ss, step{line: n, reset: true})
		case dir == "card → server" && m.MsgType == "r_apdu":
			if len(ss) == 0 || ss[len(ss)-1].reset || ss[len(ss)-1].response != nil {
				t.Fatalf("transcript line %d: r_apdu without a c_apdu", n)
			}
			ss[len(ss)-1].response = append(unhex(t, m.Response), unhex(t, m.SW)...)
		}
		steps[sock] = ss
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(steps) == 0 {
		t.Fatal("no card-side exchanges found in the transcript")
	}
	return steps
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("bad hex %q: %v", s, err)
	}
	return b
}

// TestTranscriptReplay replays every card-side c_apdu of pySim's
// recording against the default card and checks the recorded answer,
// through TransmitFollow as the agent sends it, in both delivery modes.
func TestTranscriptReplay(t *testing.T) {
	all := loadTranscript(t)
	for _, t0 := range []bool{false, true} {
		for sock, steps := range all {
			name := sock + "/direct"
			if t0 {
				name = sock + "/T0GetResponse"
			}
			t.Run(name, func(t *testing.T) {
				ctx := context.Background()
				c := New(Config{T0GetResponse: t0})
				defer c.Close()
				n := 0
				for _, s := range steps {
					if s.reset {
						atr, err := c.Reset(ctx, card.WarmReset)
						if err != nil {
							t.Fatal(err)
						}
						if hex.EncodeToString(atr) != "3b9f96801fc78031e073fe211b575352435653494da3" {
							t.Fatalf("line %d: reset ATR %x", s.line, atr)
						}
						continue
					}
					if s.response == nil {
						t.Fatalf("line %d: c_apdu %x has no recorded answer", s.line, s.command)
					}
					got, err := card.TransmitFollow(ctx, c, s.command)
					if err != nil {
						t.Fatalf("line %d: %x: %v", s.line, s.command, err)
					}
					if !bytesEqual(got, s.response) {
						t.Errorf("line %d: %x\n got %x\nwant %x", s.line, s.command, got, s.response)
					}
					n++
				}
				if n < 30 {
					t.Errorf("only %d exchanges replayed; transcript parsing looks broken", n)
				}
			})
		}
	}
}

func bytesEqual(a, b []byte) bool { return hex.EncodeToString(a) == hex.EncodeToString(b) }
