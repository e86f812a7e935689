package vmscript

import (
	"errors"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestBuilderRoundTrip(t *testing.T) {
	var b Builder
	b.Modules("xhci-pci", "usbcore").
		Env("WSRC_SERVER", "ws://127.0.0.1:8001/").
		WaitUSB(2, 0x0b, 30*time.Second).
		WaitTCP("127.0.0.1:8001", 10*time.Second).
		Start("server", "/bin/wsrc-server", "--user-bind-port", "8001").
		Run("apdu", "wsrc", "apdu", "--iccid", "8949", "00a40004023f00").
		Until("list", 20*time.Second, true, `8949\d+ +ready`, "wsrc", "list").
		Until("gone", time.Second, false, "x", "sh", "-c", `echo "a b"; echo #x`).
		Mark("remove me now").
		Mark("").
		Signal("server", "USR1").
		Stop("server")
	steps, err := Parse(b.String())
	if err != nil {
		t.Fatalf("Parse(%q): %v", b.String(), err)
	}
	want := []Step{
		{Line: 1, Op: OpModules, Argv: []string{"xhci-pci", "usbcore"}},
		{Line: 2, Op: OpEnv, Env: "WSRC_SERVER=ws://127.0.0.1:8001/"},
		{Line: 3, Op: OpWaitUSB, Count: 2, Class: 0x0b, Timeout: 30 * time.Second},
		{Line: 4, Op: OpWaitTCP, Addr: "127.0.0.1:8001", Timeout: 10 * time.Second},
		{Line: 5, Op: OpStart, Name: "server", Argv: []string{"/bin/wsrc-server", "--user-bind-port", "8001"}},
		{Line: 6, Op: OpRun, Name: "apdu", Argv: []string{"wsrc", "apdu", "--iccid", "8949", "00a40004023f00"}},
		{Line: 7, Op: OpUntil, Name: "list", Timeout: 20 * time.Second, Match: true, Pattern: regexp.MustCompile(`8949\d+ +ready`), Argv: []string{"wsrc", "list"}},
		{Line: 8, Op: OpUntil, Name: "gone", Timeout: time.Second, Pattern: regexp.MustCompile("x"), Argv: []string{"sh", "-c", `echo "a b"; echo #x`}},
		{Line: 9, Op: OpMark, Text: "remove me now"},
		{Line: 10, Op: OpMark, Text: ""},
		{Line: 11, Op: OpSignal, Name: "server", Signal: "USR1"},
		{Line: 12, Op: OpStop, Name: "server"},
	}
	if len(steps) != len(want) {
		t.Fatalf("%d steps, want %d:\n%s", len(steps), len(want), b.String())
	}
	for i := range want {
		if !reflect.DeepEqual(steps[i], want[i]) {
			t.Errorf("step %d:\n got %+v\nwant %+v", i, steps[i], want[i])
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, src := range []string{
		"frobnicate x",
		"modules",
		"env NOEQUALS",
		"env =x",
		"env A=1 B=2",
		"wait-usb 0 0b 1s",
		"wait-usb 1 zz 1s",
		"wait-usb 1 0b -1s",
		"wait-usb 1 0b",
		"wait-tcp 127.0.0.1:1",
		"wait-tcp 127.0.0.1:1 soon",
		"start onlyname",
		"start bad/name cmd",
		"run",
		"until n 1s match",
		"until n 1s maybe x cmd",
		"until n 1s match ( cmd",
		"until n never match x cmd",
		"mark two words",
		"stop",
		"signal server",
		"signal server KILL",
		"signal bad/name USR1",
		`mark "unterminated`,
		`mark "a"b`,
		strings.Repeat("#", MaxScript+1),
	} {
		if _, err := Parse(src); !errors.Is(err, ErrSyntax) {
			t.Errorf("Parse(%.40q) err = %v, want ErrSyntax", src, err)
		}
	}
	steps, err := Parse("# comment\n\n   \n\tmark x   # not a comment here\n")
	if err == nil {
		t.Fatalf("trailing words accepted: %+v", steps)
	}
	steps, err = Parse("# comment\n\n   \n\tmark   x  \n")
	if err != nil || len(steps) != 1 || steps[0].Line != 4 || steps[0].Text != "x" {
		t.Fatalf("Parse = %+v, %v", steps, err)
	}
}

var eventTests = []struct {
	line string
	want Event
	ok   bool
}{
	{"@@vm out list 8949440000001155314 ready", Event{KindOut, "list", "8949440000001155314 ready"}, true},
	{"@@vm out list", Event{KindOut, "list", ""}, true},
	{"@@vm exit list 0\r", Event{KindExit, "list", "0"}, true},
	{"[   1.2] usb 1-1: new device@@vm mark removal", Event{KindMark, "", "removal"}, true},
	{"@@vm fail 7 until list: timed out after 20s", Event{KindFail, "7", "until list: timed out after 20s"}, true},
	{"@@vm log loaded 4 modules", Event{KindLog, "", "loaded 4 modules"}, true},
	{"@@vm done", Event{KindDone, "", ""}, true},
	{"@@vm done extra", Event{}, false},
	{"@@vm exit list", Event{}, false},
	{"@@vm out ", Event{}, false},
	{"@@vm bogus x", Event{}, false},
	{"plain console output", Event{}, false},
}

func TestParseEvent(t *testing.T) {
	for _, tt := range eventTests {
		got, ok := ParseEvent(tt.line)
		if ok != tt.ok || got != tt.want {
			t.Errorf("ParseEvent(%q) = %+v, %v; want %+v, %v", tt.line, got, ok, tt.want, tt.ok)
		}
	}
}

func TestLineRoundTrip(t *testing.T) {
	for _, e := range []Event{
		{KindOut, "agent", `time=... level=INFO msg="reader added" a=b`},
		{KindExit, "list", "0"},
		{KindMark, "", "ready for removal"},
		{KindDone, "", ""},
	} {
		got, ok := ParseEvent(Line(e.Kind, e.Name, e.Text))
		if !ok || got != e {
			t.Errorf("round trip of %+v: %+v, %v", e, got, ok)
		}
	}
	if got, _ := ParseEvent(Line(KindOut, "x", "a\nb")); got.Text != `a\nb` {
		t.Errorf("newline not escaped: %q", got.Text)
	}
}

// FuzzParse: Parse never panics, and what it accepts survives being
// written back by a Builder for the steps that keep all their words.
func FuzzParse(f *testing.F) {
	f.Add("modules xhci-pci\nenv A=b\nwait-usb 1 0b 5s\nwait-tcp 127.0.0.1:1 1s\n")
	f.Add("start s a \"b c\"\nrun r x\nuntil u 1s match \"^x$\" y\nmark \"m m\"\nstop s\n")
	f.Add(`mark "\x00\u00e9"`)
	f.Fuzz(func(t *testing.T, src string) {
		steps, err := Parse(src)
		if err != nil {
			return
		}
		var b Builder
		for _, st := range steps {
			switch st.Op {
			case OpRun:
				b.Run(st.Name, st.Argv...)
			case OpStart:
				b.Start(st.Name, st.Argv...)
			case OpMark:
				b.Mark(st.Text)
			case OpModules:
				b.Modules(st.Argv...)
			}
		}
		again, err := Parse(b.String())
		if err != nil {
			t.Fatalf("re-parsing %q: %v", b.String(), err)
		}
		i := 0
		for _, st := range steps {
			switch st.Op {
			case OpRun, OpStart, OpMark, OpModules:
				a := again[i]
				i++
				if a.Op != st.Op || a.Name != st.Name || a.Text != st.Text || !reflect.DeepEqual(a.Argv, st.Argv) {
					t.Fatalf("step %+v came back as %+v", st, a)
				}
			}
		}
	})
}

// FuzzParseEvent: ParseEvent never panics and accepted events print back
// to a line that parses the same.
func FuzzParseEvent(f *testing.F) {
	for _, tt := range eventTests {
		f.Add(tt.line)
	}
	f.Fuzz(func(t *testing.T, line string) {
		e, ok := ParseEvent(line)
		if !ok {
			return
		}
		again, ok := ParseEvent(e.String())
		if !ok || again != e {
			t.Fatalf("%q -> %+v -> %q -> %+v, %v", line, e, e.String(), again, ok)
		}
	})
}
