// Package transcript reads the recording of pySim's own WSRC server that
// the compatibility tests replay: ../shared/protocol/transcript.md, beside
// the repository. Each table row of that file is one WebSocket frame (or a
// connect/close event) on one socket; this package turns the rows into
// values and leaves what to replay to each test.
package transcript

import (
	"bufio"
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
	Section int    // the "### N." heading the row stands under
	Line    int    // line number in the file, for messages
	Socket  string // "card#1", "user#2", ...
	Dir     string // one of the direction constants
	Message string // the frame exactly as sent (backticks removed), or the event text
}

// IsFrame reports whether the row is a frame rather than a connect or
// close event.
func (r Row) IsFrame() bool { return r.Dir != Connect && r.Dir != Close }

var (
	sectionRE = regexp.MustCompile(`^### (\d+)\. `)
	rowRE     = regexp.MustCompile("^\\| *[0-9.]+ *\\| *([a-z]+#\\d+) *\\| *([^|]+?) *\\| (.*) \\|$")
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

// Path returns where the recording is expected: ../shared/protocol/
// transcript.md relative to the module root (the nearest directory above
// the working directory that holds go.mod).
func Path() (string, error) {
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

// Load reads and parses the recording for a test, skipping the test with
// the reason when the file is not there (it lives in the shared folder
// beside the repository, which CI provides), and failing it when the file
// is there but yields too few rows to be the recording.
func Load(t testing.TB) []Row {
	t.Helper()
	path, err := Path()
	if err != nil {
		t.Skipf("pySim transcript not located: %v", err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Skipf("pySim transcript not available (%v): the compatibility replay needs ../shared/protocol/transcript.md beside the repository", err)
	}
	defer f.Close()
	rows, err := Parse(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if len(rows) < 50 {
		t.Fatalf("%s: only %d rows parsed; has the format changed?", path, len(rows))
	}
	return rows
}
