package agent

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/wsrc-go/wsrc/agent/agenttest"
	"github.com/wsrc-go/wsrc/card/sim"
	"github.com/wsrc-go/wsrc/protocol"
)

// transcriptRow is one frame on the card socket of the recording.
type transcriptRow struct {
	section int
	toCard  bool   // server → card; else card → server
	frame   []byte // exactly as recorded
}

// loadTranscript parses the card-socket rows of sections 1-3 of
// ../shared/protocol/transcript.md (relative to the repository root),
// skipping the test when the file is absent.
func loadTranscript(t *testing.T) []transcriptRow {
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
			t.Fatal("repository root (go.mod) not found")
		}
		dir = parent
	}
	path := filepath.Join(dir, "..", "shared", "protocol", "transcript.md")
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		t.Skipf("transcript not found at %s (it lives in the shared folder beside the repository)", path)
	}
	if err != nil {
		t.Fatal(err)
	}
	rows, err := parseTranscript(data)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return rows
}

// parseTranscript returns the card#1 rows of sections 1 to 3.
func parseTranscript(data []byte) ([]transcriptRow, error) {
	var rows []transcriptRow
	section := 0
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "### "); ok {
			section = 0
			if len(rest) > 1 && rest[1] == '.' && rest[0] >= '1' && rest[0] <= '9' {
				section = int(rest[0] - '0')
			}
			continue
		}
		if section < 1 || section > 3 || !strings.HasPrefix(line, "|") {
			continue
		}
		cols := strings.Split(line, " | ")
		if len(cols) != 4 || strings.TrimSpace(cols[1]) != "card#1" {
			continue
		}
		var toCard bool
		switch strings.TrimSpace(cols[2]) {
		case "server → card":
			toCard = true
		case "card → server":
		default:
			continue // connect/close rows
		}
		msg := strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(cols[3]), "|"))
		msg = strings.TrimSuffix(strings.TrimPrefix(msg, "`"), "`")
		rows = append(rows, transcriptRow{section: section, toCard: toCard, frame: []byte(msg)})
	}
	return rows, sc.Err()
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

func TestParseTranscript(t *testing.T) {
	in := "### 1. x\n\n| t | socket | direction | message |\n|---:|---|---|---|\n" +
		"| 0.3 | card#1 | *connect* | opened |\n" +
		"| 0.3 | card#1 | card → server | `{\"msg_type\": \"hello\"}` |\n" +
		"| 0.3 | user#1 | server → user | `{\"msg_type\": \"hello_ack\"}` |\n" +
		"| 0.4 | card#1 | server → card | `{\"msg_type\": \"hello_ack\"}` |\n" +
		"### 4. y\n| 0.5 | card#1 | server → card | `{\"msg_type\": \"c_apdu\"}` |\n"
	rows, err := parseTranscript([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []transcriptRow{
		{1, false, []byte(`{"msg_type": "hello"}`)},
		{1, true, []byte(`{"msg_type": "hello_ack"}`)},
	}
	if !reflect.DeepEqual(rows, want) {
		t.Errorf("rows = %+v", rows)
	}
}
