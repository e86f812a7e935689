// Package transcript holds the recording of pySim's own WSRC server
// (pySim at 671b0f1) that the compatibility tests replay. The recording
// is ../shared/protocol/transcript.md beside the repository; its frames
// are kept in this package's testdata/pysim-671b0f1.jsonl, one JSON row
// per line, so that the replays always run, with or without the shared
// folder. `go test ./internal/testenv/transcript -update` writes that
// file again from the Markdown, and TestRecordingUpToDate checks that
// the two agree whenever the Markdown is there.
//
// Each row is one WebSocket frame (or a connect/close event) on one
// socket; this package turns the rows into values and leaves what to
// replay to each test.
package transcript

import (
	"bufio"
	"bytes"
	_ "embed" // the recording
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// Directions as the recording writes them.
const (
	CardToServer = "card → server"
	ServerToCard = "server → card"
	UserToServer = "user → server"
	ServerToUser = "server → user"
	Connect      = "*connect*"
	Close        = "*close*"
)

// Row is one row of a section's table.
type Row struct {
	Section int    `json:"section"` // the "### N." heading the row stands under
	Line    int    `json:"line"`    // line number in transcript.md, for messages
	Socket  string `json:"socket"`  // "card#1", "user#2", ...
	Dir     string `json:"dir"`     // one of the direction constants
	Message string `json:"message"` // the frame exactly as sent (backticks removed), or the event text
}

// IsFrame reports whether the row is a frame rather than a connect or
// close event.
func (r Row) IsFrame() bool { return r.Dir != Connect && r.Dir != Close }

var (
	sectionRE = regexp.MustCompile(`^### (\d+)\. `)
	rowRE     = regexp.MustCompile(`^\| *[0-9.]+ *\| *([a-z]+#\d+) *\| *([^|]+?) *\| (.*) \|$`)
)

// Parse reads the rows of every numbered section. Rows outside a numbered
// section (the client-side output at the end) are not returned.
func Parse(r io.Reader) ([]Row, error) {
	var rows []Row
	section := 0
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if m := sectionRE.FindStringSubmatch(line); m != nil {
			section, _ = strconv.Atoi(m[1])
			continue
		}
		if strings.HasPrefix(line, "## ") {
			section = 0
			continue
		}
		m := rowRE.FindStringSubmatch(line)
		if m == nil || section == 0 {
			continue
		}
		rows = append(rows, Row{Section: section, Line: n, Socket: m[1], Dir: m[2], Message: strings.Trim(m[3], "`")})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading transcript: %w", err)
	}
	return rows, nil
}

// SharedPath returns where the Markdown recording is expected:
// ../shared/protocol/transcript.md relative to the module root (the
// nearest directory above the working directory that holds go.mod).
func SharedPath() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, "..", "shared", "protocol", "transcript.md"), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("module root (go.mod) not found")
		}
		dir = parent
	}
}

// recording is the rows of the Markdown recording, one JSON object per
// line (see Encode).
//
//go:embed testdata/pysim-671b0f1.jsonl
var recording []byte

// Encode writes rows in the form of testdata/pysim-671b0f1.jsonl.
func Encode(w io.Writer, rows []Row) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	for _, r := range rows {
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
	return nil
}

// Decode reads rows written by Encode.
func Decode(data []byte) ([]Row, error) {
	var rows []Row
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	for dec.More() {
		var r Row
		if err := dec.Decode(&r); err != nil {
			return nil, fmt.Errorf("reading the recording: row %d: %w", len(rows)+1, err)
		}
		rows = append(rows, r)
	}
	return rows, nil
}

// Load returns the recording's rows for a test. It never skips: the rows
// are part of this package.
func Load(t testing.TB) []Row {
	t.Helper()
	rows, err := Decode(recording)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) < 50 {
		t.Fatalf("only %d rows in the recording; has it been cut?", len(rows))
	}
	return rows
}
