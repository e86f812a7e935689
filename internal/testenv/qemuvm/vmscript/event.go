package vmscript

import "strings"

// Prefix starts every marker line the guest init prints.
const Prefix = "@@vm "

// Kind is the kind of a marker line.
type Kind string

// Marker kinds.
const (
	KindOut  Kind = "out"  // Name: process, Text: one output line
	KindExit Kind = "exit" // Name: process, Text: exit code (or "signal: ...")
	KindMark Kind = "mark" // Text: the mark
	KindFail Kind = "fail" // Name: script line number, Text: why
	KindLog  Kind = "log"  // Text: a message of the init itself
	KindDone Kind = "done" // the script finished; power-off follows
)

// Event is one marker line.
type Event struct {
	Kind Kind
	Name string
	Text string
}

func (e Event) String() string {
	switch e.Kind {
	case KindOut, KindExit, KindFail:
		return Prefix + string(e.Kind) + " " + e.Name + " " + e.Text
	case KindDone:
		return Prefix + string(e.Kind)
	}
	return Prefix + string(e.Kind) + " " + e.Text
}

// Line formats an event as the console line the guest prints (without
// the newline); a line break inside Text is escaped so the event stays one
// line.
func Line(kind Kind, name, text string) string {
	text = strings.NewReplacer("\r", `\r`, "\n", `\n`).Replace(text)
	return Event{Kind: kind, Name: name, Text: text}.String()
}

// ParseEvent finds a marker in a console line. The marker may follow other
// output on the same line (a kernel message printed without a newline).
func ParseEvent(line string) (Event, bool) {
	i := strings.Index(line, Prefix)
	if i < 0 {
		return Event{}, false
	}
	rest := strings.TrimRight(line[i+len(Prefix):], "\r\n")
	kind, rest, _ := strings.Cut(rest, " ")
	e := Event{Kind: Kind(kind)}
	switch e.Kind {
	case KindOut, KindExit, KindFail:
		name, text, ok := strings.Cut(rest, " ")
		if !ok && e.Kind != KindOut {
			return Event{}, false
		}
		if name == "" {
			return Event{}, false
		}
		e.Name, e.Text = name, text
		return e, true
	case KindMark, KindLog:
		e.Text = rest
		return e, true
	case KindDone:
		if rest != "" {
			return Event{}, false
		}
		return e, true
	}
	return Event{}, false
}
