package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/wsrc-go/wsrc/card/sim"
	"github.com/wsrc-go/wsrc/client/clienttest"
	"github.com/wsrc-go/wsrc/protocol"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// result is what one run of the command left.
type result struct {
	code           int
	stdout, stderr string
}

// runWith runs wsrc in-process with the environment env and stdin.
func runWith(ctx context.Context, env map[string]string, stdin string, args ...string) result {
	var out, errOut strings.Builder
	cl := &cli{
		stdin:  strings.NewReader(stdin),
		stdout: &out,
		stderr: &errOut,
		getenv: func(k string) string { return env[k] },
	}
	code := cl.run(ctx, args)
	return result{code, out.String(), errOut.String()}
}

// fake starts a fake server with cfg (the transcript card if none) and
// returns an environment pointing wsrc at it.
func fake(t *testing.T, cfg clienttest.Config) (*clienttest.Server, map[string]string) {
	t.Helper()
	if cfg.Cards == nil {
		cfg.Cards = []*clienttest.Card{clienttest.TranscriptCard()}
	}
	srv := clienttest.Start(cfg)
	t.Cleanup(srv.Close)
	return srv, map[string]string{"WSRC_SERVER": srv.URL}
}

func check(t *testing.T, got result, want result) {
	t.Helper()
	if got.code != want.code {
		t.Errorf("exit code %d, want %d", got.code, want.code)
	}
	if got.stdout != want.stdout {
		t.Errorf("stdout:\n%s\nwant:\n%s", got.stdout, want.stdout)
	}
	if got.stderr != want.stderr {
		t.Errorf("stderr:\n%s\nwant:\n%s", got.stderr, want.stderr)
	}
}

// twoCards is the transcript card plus one still being identified, at an
// IPv6 address, whose agent reports a reader name with a tab in it.
func twoCards() []*clienttest.Card {
	return []*clienttest.Card{
		clienttest.TranscriptCard(),
		{
			Identities: protocol.Identities{protocol.IdentityATR: "3bfeed04"},
			Addr:       protocol.RemoteAddr{IP: "2001:db8::7", Port: 50114},
			Agent:      "pi-lab",
			Reader:     "Gemalto PC Twin\tReader 00 00",
			Init:       true,
		},
	}
}

func TestList(t *testing.T) {
	_, env := fake(t, clienttest.Config{Cards: twoCards()})
	check(t, runWith(t.Context(), env, "", "list"), result{0, `ICCID                EID                               STATE  ATR                                           AGENT/READER                         ADDRESS
8949440000001155314  89049032123451234512345678901235  ready  3b9f96801fc78031e073fe211b575352435653494da3  -                                    127.0.0.1:37586
-                    -                                 init   3bfeed04                                      pi-lab/Gemalto PC Twin?Reader 00 00  [2001:db8::7]:50114
`, ""})
}

func TestListJSON(t *testing.T) {
	_, env := fake(t, clienttest.Config{Cards: twoCards()})
	check(t, runWith(t.Context(), env, "", "list", "--json"), result{0, `[
  {
    "iccid": "8949440000001155314",
    "eid": "89049032123451234512345678901235",
    "atr": "3b9f96801fc78031e073fe211b575352435653494da3",
    "state": "ready",
    "address": "127.0.0.1:37586",
    "identities": {
      "ATR": "3b9f96801fc78031e073fe211b575352435653494da3",
      "EID": "89049032123451234512345678901235",
      "ICCID": "8949440000001155314"
    }
  },
  {
    "atr": "3bfeed04",
    "state": "init",
    "agent": "pi-lab",
    "reader": "Gemalto PC Twin\tReader 00 00",
    "address": "[2001:db8::7]:50114",
    "identities": {
      "ATR": "3bfeed04"
    }
  }
]
`, ""})
}

// TestListIMSI: with a card whose IMSI the server found, the table has an
// IMSI column and JSON an imsi field; --id imsi=... selects the card.
func TestListIMSI(t *testing.T) {
	usim := clienttest.SimCard(sim.Config{USIM: true, ICCID: "8949440000001155322", EID: "89049032123451234512345678901332", IMSI: "001010123456790"})
	usim.Addr = protocol.RemoteAddr{IP: "127.0.0.1", Port: 37587}
	_, env := fake(t, clienttest.Config{Cards: []*clienttest.Card{clienttest.TranscriptCard(), usim}})
	check(t, runWith(t.Context(), env, "", "list"), result{0, `ICCID                EID                               IMSI             STATE  ATR                                           AGENT/READER  ADDRESS
8949440000001155314  89049032123451234512345678901235  -                ready  3b9f96801fc78031e073fe211b575352435653494da3  -             127.0.0.1:37586
8949440000001155322  89049032123451234512345678901332  001010123456790  ready  3b9f96801fc78031e073fe211b575352435653494da3  -             127.0.0.1:37587
`, ""})
	r := runWith(t.Context(), env, "", "list", "--json")
	if r.code != 0 || !strings.Contains(r.stdout, `"imsi": "001010123456790"`) || strings.Count(r.stdout, `"imsi"`) != 1 {
		t.Errorf("list --json: %d\n%s", r.code, r.stdout)
	}
	check(t, runWith(t.Context(), env, "", "apdu", "--id", "imsi=001010123456790", "00a40004022fe2", "00b000000a"),
		result{0, "> 00a40004022fe2\n< 62178202412183022fe28a01058b032f06038002000a880110 9000 (normal processing)\n> 00b000000a\n< 989444000000115523f2 9000 (normal processing)\n", ""})
}

// The filter flags: a server that does not filter (the fake, as
// pySim's) sends every card and wsrc filters them.
func TestListFiltered(t *testing.T) {
	_, env := fake(t, clienttest.Config{Cards: twoCards()})
	check(t, runWith(t.Context(), env, "", "list", "--agent", "pi-lab", "--json"), result{0, `[
  {
    "atr": "3bfeed04",
    "state": "init",
    "agent": "pi-lab",
    "reader": "Gemalto PC Twin\tReader 00 00",
    "address": "[2001:db8::7]:50114",
    "identities": {
      "ATR": "3bfeed04"
    }
  }
]
`, ""})
	check(t, runWith(t.Context(), env, "", "list", "--iccid", clienttest.TranscriptICCID+"f", "--json"), result{0, `[
  {
    "iccid": "8949440000001155314",
    "eid": "89049032123451234512345678901235",
    "atr": "3b9f96801fc78031e073fe211b575352435653494da3",
    "state": "ready",
    "address": "127.0.0.1:37586",
    "identities": {
      "ATR": "3b9f96801fc78031e073fe211b575352435653494da3",
      "EID": "89049032123451234512345678901235",
      "ICCID": "8949440000001155314"
    }
  }
]
`, ""})
	r := runWith(t.Context(), env, "", "list", "--limit", "1")
	if r.code != 0 || !strings.HasSuffix(r.stdout, "1 of 2 matching cards shown (--limit)\n") || strings.Count(r.stdout, "\n") != 3 {
		t.Errorf("--limit 1: %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	check(t, runWith(t.Context(), env, "", "list", "--reader", "none"), result{0, "no cards\n", ""})
}

func TestListEmpty(t *testing.T) {
	_, env := fake(t, clienttest.Config{Cards: []*clienttest.Card{}})
	check(t, runWith(t.Context(), env, "", "list"), result{0, "no cards\n", ""})
	check(t, runWith(t.Context(), env, "", "list", "--json"), result{0, "[]\n", ""})
}

func TestServerURL(t *testing.T) {
	srv, env := fake(t, clienttest.Config{Cards: []*clienttest.Card{}})
	hostPort := strings.TrimSuffix(strings.TrimPrefix(srv.URL, "ws://"), "/")
	// --server wins over the environment, before or after the command;
	// a bare host:port means ws://.
	bad := map[string]string{"WSRC_SERVER": "ws://127.0.0.1:1/"}
	check(t, runWith(t.Context(), bad, "", "list", "--server", hostPort), result{0, "no cards\n", ""})
	check(t, runWith(t.Context(), bad, "", "--server="+srv.URL, "list"), result{0, "no cards\n", ""})
	check(t, runWith(t.Context(), env, "", "list"), result{0, "no cards\n", ""})
}

func TestAPDU(t *testing.T) {
	srv, env := fake(t, clienttest.Config{})
	check(t, runWith(t.Context(), env, "", "apdu", "--iccid", clienttest.TranscriptICCID,
		"00a40004023f00", "00 A4 00 04 02 2F E2", "00:b0:00:00:0a", "00a40004027f20"), result{0, `> 00a40004023f00
< 62208202782183023f00a5038001718a01058b032f0601c60990014083010183010a 9000 (normal processing)
> 00a40004022fe2
< 62178202412183022fe28a01058b032f06038002000a880110 9000 (normal processing)
> 00b000000a
< 989444000000115513f4 9000 (normal processing)
> 00a40004027f20
< 6a82 (file or application not found)
`, ""})
	// Flags may follow the APDUs.
	check(t, runWith(t.Context(), env, "", "apdu", "00a40004027f20", "--eid", clienttest.TranscriptEID, "--json"), result{0, `{
  "identities": {
    "ATR": "3b9f96801fc78031e073fe211b575352435653494da3",
    "EID": "89049032123451234512345678901235",
    "ICCID": "8949440000001155314"
  },
  "apdus": [
    {
      "command": "00a40004027f20",
      "response": "",
      "sw": "6a82",
      "meaning": "file or application not found"
    }
  ]
}
`, ""})
	got := srv.Received()
	if want := `{"id_type": "eid", "id_str": "89049032123451234512345678901235", "msg_type": "select_card"}`; got[len(got)-2] != want {
		t.Errorf("select frame %s, want %s", got[len(got)-2], want)
	}
}

func TestSelectByATRAndID(t *testing.T) {
	_, env := fake(t, clienttest.Config{})
	for _, sel := range [][]string{
		{"--atr", "3B:9F:96:80:1F:C7:80:31:E0:73:FE:21:1B:57:53:52:43:56:53:49:4D:A3"},
		{"--id", "ICCID=" + clienttest.TranscriptICCID + "f"},
	} {
		args := append([]string{"apdu"}, sel...)
		args = append(args, "00a40004027f20")
		check(t, runWith(t.Context(), env, "", args...), result{0, "> 00a40004027f20\n< 6a82 (file or application not found)\n", ""})
	}
}

func TestServerErrors(t *testing.T) {
	card := clienttest.TranscriptCard()
	transmit := card.Transmit
	card.Transmit = func(cmd []byte) ([]byte, uint16, error) {
		if cmd[1] == 0xb0 {
			return nil, 0, errors.New("card 3b9f…a3 did not answer within 30s")
		}
		return transmit(cmd)
	}
	_, env := fake(t, clienttest.Config{Cards: []*clienttest.Card{card}})
	check(t, runWith(t.Context(), env, "", "apdu", "--iccid", "1234", "00a40004023f00"), result{1, "",
		"wsrc: selecting card iccid=1234: server: no card with iccid == 1234\n"})
	check(t, runWith(t.Context(), env, "", "apdu", "--iccid", clienttest.TranscriptICCID, "00a40004023f00", "00b000000a", "00a40004023f00"), result{1,
		"> 00a40004023f00\n< 62208202782183023f00a5038001718a01058b032f0601c60990014083010183010a 9000 (normal processing)\n> 00b000000a\n",
		"wsrc: transmitting APDU: server: card 3b9f…a3 did not answer within 30s\n"})
	// JSON gives what was done before the failure.
	r := runWith(t.Context(), env, "", "apdu", "--json", "--iccid", clienttest.TranscriptICCID, "00a40004023f00", "00b000000a")
	if r.code != 1 || !strings.Contains(r.stdout, `"command": "00a40004023f00"`) || strings.Contains(r.stdout, `"command": "00b000000a"`) {
		t.Errorf("json on failure: %+v", r)
	}
}

func TestReset(t *testing.T) {
	_, env := fake(t, clienttest.Config{})
	check(t, runWith(t.Context(), env, "", "reset", "--eid", clienttest.TranscriptEID), result{0,
		"ATR 3b9f96801fc78031e073fe211b575352435653494da3\n", ""})
	check(t, runWith(t.Context(), env, "", "reset", "--eid", clienttest.TranscriptEID, "--json"), result{0, `{
  "identities": {
    "ATR": "3b9f96801fc78031e073fe211b575352435653494da3",
    "EID": "89049032123451234512345678901235",
    "ICCID": "8949440000001155314"
  },
  "atr": "3b9f96801fc78031e073fe211b575352435653494da3"
}
`, ""})
}

func TestResetPySim(t *testing.T) {
	_, env := fake(t, clienttest.Config{PySimReset: true})
	check(t, runWith(t.Context(), env, "", "reset", "--iccid", clienttest.TranscriptICCID), result{0,
		"reset done (the server does not report the new ATR)\n", ""})
	r := runWith(t.Context(), env, "", "reset", "--iccid", clienttest.TranscriptICCID, "--json")
	if r.code != 0 || !strings.HasSuffix(r.stdout, "\"atr\": null\n}\n") {
		t.Errorf("reset --json against pySim: %+v", r)
	}
}

func TestConnectionFailures(t *testing.T) {
	card := clienttest.TranscriptCard()
	block := make(chan struct{})
	card.Transmit = func(cmd []byte) ([]byte, uint16, error) {
		if cmd[1] == 0xb0 {
			<-block // never answers while the test runs
			return nil, 0x9000, nil
		}
		return nil, 0, fmt.Errorf("agent pi-lab went away: %w", clienttest.ErrHangUp)
	}
	_, env := fake(t, clienttest.Config{Cards: []*clienttest.Card{card}})
	t.Cleanup(func() { close(block) }) // runs before the server's Close
	check(t, runWith(t.Context(), env, "", "apdu", "--iccid", clienttest.TranscriptICCID, "00a40004023f00"), result{3, "> 00a40004023f00\n",
		"wsrc: transmitting APDU: connection closed by the server (1011 internal error): agent pi-lab went away: hang up\n"})
	check(t, runWith(t.Context(), env, "", "apdu", "--timeout", "20ms", "--iccid", clienttest.TranscriptICCID, "00b000000a"), result{3, "> 00b000000a\n",
		"wsrc: transmitting APDU: c_apdu: no reply from the server in time (20ms), connection closed\n"})
	check(t, runWith(t.Context(), map[string]string{"WSRC_SERVER": "wss://"}, "", "list"), result{3, "",
		"wsrc: server URL \"wss:\": no host\n"})
}

func TestInterrupted(t *testing.T) {
	_, env := fake(t, clienttest.Config{})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	check(t, runWith(ctx, env, "", "list"), result{130, "", "wsrc: interrupted\n"})
}

func TestVerbose(t *testing.T) {
	_, env := fake(t, clienttest.Config{Cards: []*clienttest.Card{}})
	r := runWith(t.Context(), env, "", "-v", "list")
	if r.code != 0 || !strings.Contains(r.stderr, `level=DEBUG msg=send`) || !strings.Contains(r.stderr, `frame="{\"msg_type\": \"list_cards\"}"`) {
		t.Errorf("verbose: %+v", r)
	}
	if strings.Contains(r.stderr, "time=") {
		t.Errorf("verbose trace has timestamps: %s", r.stderr)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"bogus"}, "wsrc: unknown command \"bogus\"\nRun 'wsrc --help' for usage.\n"},
		{[]string{"--bogus"}, "wsrc: flag provided but not defined: -bogus\nRun 'wsrc --help' for usage.\n"},
		{[]string{"list", "--iccid", "1", "--eid", "2"}, "wsrc list: filter by at most one of --iccid, --eid, --atr, --id\nRun 'wsrc list --help' for usage.\n"},
		{[]string{"list", "--limit", "-1"}, "wsrc list: --limit wants a number of cards, 0 for all\nRun 'wsrc list --help' for usage.\n"},
		{[]string{"list", "extra"}, "wsrc list: no arguments expected, got \"extra\"\nRun 'wsrc list --help' for usage.\n"},
		{[]string{"apdu", "--iccid", "1"}, "wsrc apdu: no APDU given\nRun 'wsrc apdu --help' for usage.\n"},
		{[]string{"apdu", "00a40000"}, "wsrc apdu: choose the card with exactly one of --iccid, --eid, --atr, --id\nRun 'wsrc apdu --help' for usage.\n"},
		{[]string{"apdu", "--iccid", "1", "--eid", "2", "00a40000"}, "wsrc apdu: choose the card with exactly one of --iccid, --eid, --atr, --id\nRun 'wsrc apdu --help' for usage.\n"},
		{[]string{"apdu", "--iccid", "1", "00a40000", "00a4 0"}, "wsrc apdu: APDU 2 (\"00a4 0\"): odd number of hex digits (5)\nRun 'wsrc apdu --help' for usage.\n"},
		{[]string{"apdu", "--iccid", "1", "00a4x000"}, "wsrc apdu: APDU 1 (\"00a4x000\"): 'x' at character 5 is not a hex digit\nRun 'wsrc apdu --help' for usage.\n"},
		{[]string{"reset", "--id", "iccid"}, "wsrc reset: --id wants TYPE=VALUE, e.g. --id imsi=262011234567890, got \"iccid\"\nRun 'wsrc reset --help' for usage.\n"},
		{[]string{"reset", "--atr", "3b9"}, "wsrc reset: --atr: want an even, non-zero number of hex digits, got 3\nRun 'wsrc reset --help' for usage.\n"},
		{[]string{"shell", "--eid", "1", "00a40000"}, "wsrc shell: no arguments expected, got \"00a40000\" (APDUs go to stdin, or use wsrc apdu)\nRun 'wsrc shell --help' for usage.\n"},
		{[]string{"list", "--timeout", "soon"}, "wsrc list: invalid value \"soon\" for flag -timeout: parse error\nRun 'wsrc list --help' for usage.\n"},
		{[]string{"version", "x"}, "wsrc version: no arguments expected\nRun 'wsrc version --help' for usage.\n"},
	} {
		// No server runs: usage errors are found before connecting.
		r := runWith(t.Context(), map[string]string{"WSRC_SERVER": "ws://127.0.0.1:1/"}, "", tc.args...)
		if r.code != exitUsage || r.stdout != "" || r.stderr != tc.want {
			t.Errorf("wsrc %q = %d\n%s\nwant 2 and\n%s", tc.args, r.code, r.stderr, tc.want)
		}
	}
	r := runWith(t.Context(), nil, "")
	if r.code != exitUsage || !strings.HasPrefix(r.stderr, "wsrc - use smart cards") {
		t.Errorf("wsrc without arguments: %+v", r)
	}
}

func TestHelp(t *testing.T) {
	for _, c := range commands {
		for _, args := range [][]string{{c.name, "--help"}, {"help", c.name}, {c.name, "-h"}} {
			r := runWith(t.Context(), nil, "", args...)
			if r.code != 0 || !strings.HasPrefix(r.stdout, "wsrc "+c.name+" - "+c.summary+"\n\nUsage:\n") || r.stderr != "" {
				t.Errorf("wsrc %q: %+v", args, r)
			}
			if c.name != "version" && !strings.Contains(r.stdout, "\nExamples:\n") {
				t.Errorf("wsrc %q has no examples", args)
			}
		}
	}
	for _, args := range [][]string{{"--help"}, {"help"}, {"-h"}} {
		r := runWith(t.Context(), nil, "", args...)
		if r.code != 0 || !strings.Contains(r.stdout, "Exit status:\n") {
			t.Errorf("wsrc %q: %+v", args, r)
		}
	}
	check(t, runWith(t.Context(), nil, "", "version"), result{0, "wsrc dev\n", ""})
	// A password in WSRC_SERVER is not shown as the default.
	r := runWith(t.Context(), map[string]string{"WSRC_SERVER": "ws://bob:secret@relay:4220/"}, "", "list", "--help")
	if !strings.Contains(r.stdout, "(default ws://bob:xxxxx@relay:4220/)") || strings.Contains(r.stdout, "secret") {
		t.Errorf("list --help with a password in WSRC_SERVER:\n%s", r.stdout)
	}
}

func TestAddressHidden(t *testing.T) {
	for _, c := range []struct {
		in   protocol.RemoteAddr
		want string
	}{
		{protocol.RemoteAddr{}, ""},
		{protocol.RemoteAddr{IP: "0.0.0.0"}, ""},
		{protocol.RemoteAddr{IP: "127.0.0.1", Port: 4711}, "127.0.0.1:4711"},
		{protocol.RemoteAddr{IP: "::1", Port: 4711}, "[::1]:4711"},
	} {
		if got := address(c.in); got != c.want {
			t.Errorf("address(%+v) = %q, want %q", c.in, got, c.want)
		}
	}
}
