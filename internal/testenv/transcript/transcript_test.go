package transcript

import (
	"bytes"
	"flag"
	"os"
	"strings"
	"testing"
)

const sample = "# WSRC transcript\n\n### 1. Card agent connects\n\n" +
	"| t [s] | socket | direction | message |\n|---:|---|---|---|\n" +
	"| 0.345 | card#1 | *connect* | WebSocket opened by 127.0.0.1:56446 |\n" +
	"| 0.346 | card#1 | card → server | `{\"atr\": \"3b00\", \"client_type\": \"card\", \"msg_type\": \"hello\"}` |\n" +
	"| 0.346 | card#1 | server → card | `{\"msg_type\": \"hello_ack\"}` |\n" +
	"\n### 12. Later\n\n| 1.0 | user#3 | user → server | `{\"msg_type\": \"list_cards\"}` |\n" +
	"\n## Client-side output\n\n| 9.9 | user#3 | user → server | `ignored` |\n"

func TestParse(t *testing.T) {
	rows, err := Parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	want := []Row{
		{Section: 1, Line: 7, Socket: "card#1", Dir: Connect, Message: "WebSocket opened by 127.0.0.1:56446"},
		{Section: 1, Line: 8, Socket: "card#1", Dir: CardToServer, Message: `{"atr": "3b00", "client_type": "card", "msg_type": "hello"}`},
		{Section: 1, Line: 9, Socket: "card#1", Dir: ServerToCard, Message: `{"msg_type": "hello_ack"}`},
		{Section: 12, Line: 13, Socket: "user#3", Dir: UserToServer, Message: `{"msg_type": "list_cards"}`},
	}
	if len(rows) != len(want) {
		t.Fatalf("got %d rows %+v, want %d", len(rows), rows, len(want))
	}
	for i := range want {
		if rows[i] != want[i] {
			t.Errorf("row %d = %+v, want %+v", i, rows[i], want[i])
		}
	}
	if rows[0].IsFrame() || !rows[1].IsFrame() {
		t.Error("IsFrame wrong")
	}
}

var update = flag.Bool("update", false, "write testdata/pysim-671b0f1.jsonl again from ../shared/protocol/transcript.md")

// The committed rows are those of the Markdown recording, whenever it is
// there (CI puts the shared folder beside the clone).
func TestRecordingUpToDate(t *testing.T) {
	path, err := SharedPath()
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		if *update || os.Getenv("CI") == "true" {
			t.Fatalf("the Markdown recording: %v", err)
		}
		t.Skipf("nothing to compare with: %v (the replays use the committed rows)", err)
	}
	defer f.Close()
	rows, err := Parse(f)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := Encode(&b, rows); err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile("testdata/pysim-671b0f1.jsonl", b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if !bytes.Equal(b.Bytes(), recording) {
		t.Fatalf("testdata/pysim-671b0f1.jsonl differs from %s: run go test -update in this package", path)
	}
}

// TestLoad reads the committed recording.
func TestLoad(t *testing.T) {
	rows := Load(t)
	frames := 0
	for _, r := range rows {
		if r.IsFrame() && !strings.HasPrefix(r.Message, "{") {
			t.Errorf("line %d: frame is not a JSON object: %s", r.Line, r.Message)
		}
		if r.IsFrame() {
			frames++
		}
	}
	if frames < 100 {
		t.Errorf("only %d frames", frames)
	}
}
