package sim

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/internal/testenv/transcript"
)

// step is one card-side exchange of the recording: a c_apdu and the
// r_apdu that answered it, or a reset_req.
type step struct {
	line     int
	reset    bool
	command  []byte
	response []byte // data followed by SW
}

// loadTranscript returns the card-side steps of every card socket, in order.
func loadTranscript(t *testing.T) map[string][]step {
	t.Helper()
	steps := map[string][]step{}
	for _, r := range transcript.Load(t) {
		if !strings.HasPrefix(r.Socket, "card#") || !r.IsFrame() {
			continue
		}
		var m struct {
			MsgType  string `json:"msg_type"`
			Command  string `json:"command"`
			Response string `json:"response"`
			SW       string `json:"sw"`
		}
		if err := json.Unmarshal([]byte(r.Message), &m); err != nil {
			t.Fatalf("transcript line %d: %v", r.Line, err)
		}
		ss := steps[r.Socket]
		switch {
		case r.Dir == transcript.ServerToCard && m.MsgType == "c_apdu":
			ss = append(ss, step{line: r.Line, command: unhex(t, m.Command)})
		case r.Dir == transcript.ServerToCard && m.MsgType == "reset_req":
			ss = append(ss, step{line: r.Line, reset: true})
		case r.Dir == transcript.CardToServer && m.MsgType == "r_apdu":
			if len(ss) == 0 || ss[len(ss)-1].reset || ss[len(ss)-1].response != nil {
				t.Fatalf("transcript line %d: r_apdu without a c_apdu", r.Line)
			}
			ss[len(ss)-1].response = append(unhex(t, m.Response), unhex(t, m.SW)...)
		}
		steps[r.Socket] = ss
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
