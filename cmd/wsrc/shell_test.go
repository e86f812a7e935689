package main

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"

	"golang.org/x/term"

	"github.com/wsrc-go/wsrc/client"
	"github.com/wsrc-go/wsrc/client/clienttest"
)

func TestShellScript(t *testing.T) {
	_, env := fake(t, clienttest.Config{})
	script := `# read EF.ICCID
00a40004023f00

00 a4 00 04 02 2f e2
00:B0:00:00:0A
RESET
help
quit
00a40004023f00
`
	check(t, runWith(t.Context(), env, script, "shell", "--iccid", clienttest.TranscriptICCID), result{0, `> 00a40004023f00
< 62208202782183023f00a5038001718a01058b032f0601c60990014083010183010a 9000 (normal processing)
> 00a40004022fe2
< 62178202412183022fe28a01058b032f06038002000a880110 9000 (normal processing)
> 00b000000a
< 989444000000115513f4 9000 (normal processing)
> reset
ATR 3b9f96801fc78031e073fe211b575352435653494da3
` + shellHelp, ""})
	// End of input without quit, last line without newline.
	check(t, runWith(t.Context(), env, "00a40004027f20", "shell", "--eid", clienttest.TranscriptEID), result{0,
		"> 00a40004027f20\n< 6a82 (file or application not found)\n", ""})
}

func TestShellScriptStopsAtFirstError(t *testing.T) {
	card := clienttest.TranscriptCard()
	card.Reset = func() ([]byte, error) { return nil, errors.New("reset refused by agent policy") }
	_, env := fake(t, clienttest.Config{Cards: []*clienttest.Card{card}})
	sel := []string{"shell", "--iccid", clienttest.TranscriptICCID}
	check(t, runWith(t.Context(), env, "00a40004027f20\n00b0 0\n00b000000a\n", sel...), result{2,
		"> 00a40004027f20\n< 6a82 (file or application not found)\n",
		"wsrc shell: line 2: odd number of hex digits (5) (type help for the commands)\nRun 'wsrc shell --help' for usage.\n"})
	check(t, runWith(t.Context(), env, "reset\n00b000000a\n", sel...), result{1, "> reset\n",
		"wsrc: line 1: resetting card: server: reset refused by agent policy\n"})
	check(t, runWith(t.Context(), env, strings.Repeat("0", maxLine+1), sel...), result{2, "",
		"wsrc shell: line 1: longer than 262176 bytes\nRun 'wsrc shell --help' for usage.\n"})
	// The selection fails before any input is read.
	check(t, runWith(t.Context(), env, "00b000000a\n", "shell", "--iccid", "1"), result{1, "",
		"wsrc: selecting card iccid=1: server: no card with iccid == 1\n"})
}

// fakeTTY feeds typed keys to a term.Terminal and collects what it shows.
type fakeTTY struct {
	in  io.Reader
	mu  sync.Mutex
	out bytes.Buffer
}

func (f *fakeTTY) Read(p []byte) (int, error) { return f.in.Read(p) }

func (f *fakeTTY) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.out.Write(p)
}

func (f *fakeTTY) String() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.out.String()
}

// selected serves card and returns a client that has selected it.
func selected(t *testing.T, card *clienttest.Card) (*clienttest.Server, *client.Client) {
	t.Helper()
	srv, _ := fake(t, clienttest.Config{Cards: []*clienttest.Card{card}})
	c, err := client.Dial(t.Context(), srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Select(t.Context(), "iccid", clienttest.TranscriptICCID); err != nil {
		t.Fatal(err)
	}
	return srv, c
}

// The interactive loop: errors are shown and it goes on; the up arrow
// brings back the previous line; Ctrl-D ends it.
func TestShellInteractive(t *testing.T) {
	card := clienttest.TranscriptCard()
	card.Reset = func() ([]byte, error) { return nil, errors.New("reset refused by agent policy") }
	srv, c := selected(t, card)
	keys := "00a40004027f20\r" + "zz\r" + "reset\r" + "\x1b[A\x1b[A\x1b[A\r" + "\x04"
	tty := &fakeTTY{in: strings.NewReader(keys)}
	tm := term.NewTerminal(tty, "wsrc> ")
	sh := &shell{c: c, out: tm, errOut: tm, interactive: true}
	if err := sh.run(t.Context(), tm); err != nil {
		t.Fatalf("run: %v", err)
	}
	shown := tty.String()
	for _, want := range []string{
		"< 6a82 (file or application not found)\r\n",
		"error: 'z' at character 1 is not a hex digit (type help for the commands)\r\n",
		"error: resetting card: server: reset refused by agent policy\r\n",
	} {
		if !strings.Contains(shown, want) {
			t.Errorf("terminal lacks %q:\n%q", want, shown)
		}
	}
	if n := strings.Count(shown, "< 6a82"); n != 2 {
		t.Errorf("history recall: SELECT answered %d times, want 2:\n%q", n, shown)
	}
	if strings.Contains(shown, "\n> 00a40004027f20") {
		t.Errorf("interactive shell echoes commands:\n%q", shown)
	}
	want := []string{`{"command": "00a40004027f20", "msg_type": "c_apdu"}`, `{"msg_type": "reset_req"}`, `{"command": "00a40004027f20", "msg_type": "c_apdu"}`}
	got := srv.Received()
	if got = got[len(got)-3:]; strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("frames %q, want %q", got, want)
	}
}

// A lost connection ends even the interactive loop.
func TestShellInteractiveConnectionLost(t *testing.T) {
	card := clienttest.TranscriptCard()
	card.Transmit = func([]byte) ([]byte, uint16, error) { return nil, 0, clienttest.ErrHangUp }
	_, c := selected(t, card)
	tty := &fakeTTY{in: strings.NewReader("00b000000a\r00b000000a\r")}
	tm := term.NewTerminal(tty, "wsrc> ")
	sh := &shell{c: c, out: tm, errOut: tm, interactive: true}
	err := sh.run(t.Context(), tm)
	var ce *client.ConnectionError
	if !errors.As(err, &ce) || ce.Code != 1011 {
		t.Fatalf("run error %v, want the ConnectionError", err)
	}
}
