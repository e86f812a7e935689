package agent

import (
	"bytes"
	"reflect"
	"testing"

	"github.com/wsrc-go/wsrc/agent/agenttest"
	"github.com/wsrc-go/wsrc/card/sim"
	"github.com/wsrc-go/wsrc/internal/testenv/transcript"
	"github.com/wsrc-go/wsrc/protocol"
)

// transcriptRow is one frame on the card socket of the recording.
type transcriptRow struct {
	section int
	toCard  bool   // server → card; else card → server
	frame   []byte // exactly as recorded
}

// loadTranscript returns the card#1 frames of sections 1 to 3 of pySim's
// recording, skipping the test when the recording is absent.
func loadTranscript(t *testing.T) []transcriptRow {
	t.Helper()
	var rows []transcriptRow
	for _, r := range transcript.Load(t) {
		if r.Section > 3 || r.Socket != "card#1" || !r.IsFrame() {
			continue
		}
		rows = append(rows, transcriptRow{section: r.Section, toCard: r.Dir == transcript.ServerToCard, frame: []byte(r.Message)})
	}
	return rows
}

// TestTranscript plays pySim's server side of the recording (card
// identification, the user session, the pySim-shell session) against an
// agent with the default simulated card, which is the recorded card, and
// checks every answer field for field.
func TestTranscript(t *testing.T) {
	rows := loadTranscript(t)
	if len(rows) < 20 {
		t.Fatalf("only %d card rows in the transcript", len(rows))
	}
	srv := agenttest.NewServer(t)
	c := sim.New(sim.Config{})
	s := NewSession(Config{Server: srv.URL(), Agent: "testhost", Logger: testLogger(), Timing: fastTiming}, c, "Simulated reader 0")
	r := start(t, s.Run)
	conn := srv.Accept()

	// The hello row: ours has the extension fields on top.
	if rows[0].toCard {
		t.Fatalf("first row goes to the card: %s", rows[0].frame)
	}
	want := decode(t, rows[0].frame).(protocol.Hello)
	got := conn.Read().(protocol.Hello)
	if got.ClientType != want.ClientType || !bytes.Equal(got.ATR, want.ATR) {
		t.Errorf("hello = %+v, recorded %+v", got, want)
	}
	if got.Agent != "testhost" || got.Reader != "Simulated reader 0" || got.Version == "" {
		t.Errorf("hello extensions = %+v", got)
	}

	exchanged := map[int]int{}
	for i, row := range rows[1:] {
		if row.toCard {
			conn.SendRaw(row.frame)
			continue
		}
		raw := conn.ReadRaw()
		gotM, wantM := decode(t, raw), decode(t, row.frame)
		if !reflect.DeepEqual(gotM, wantM) {
			t.Fatalf("section %d, row %d: agent sent\n  %s\nrecorded\n  %s", row.section, i+1, raw, row.frame)
		}
		if !bytes.Equal(raw, row.frame) {
			t.Errorf("section %d, row %d: same message, other bytes:\n  %s\nrecorded\n  %s", row.section, i+1, raw, row.frame)
		}
		exchanged[row.section]++
	}
	for sec := 1; sec <= 3; sec++ {
		if exchanged[sec] == 0 {
			t.Errorf("section %d: no card answer checked", sec)
		}
	}
	t.Logf("answers checked per section: %v", exchanged)
	r.cancel()
	if code, _ := conn.ExpectClose(); code != 1001 {
		t.Errorf("close code %d, want 1001 (going away)", code)
	}
	if err := r.wait(t); err != nil {
		t.Errorf("Run = %v", err)
	}
}

func decode(t *testing.T, b []byte) protocol.Message {
	t.Helper()
	m, err := protocol.Decode(b)
	if err != nil {
		t.Fatalf("decoding %s: %v", b, err)
	}
	return m
}
