package gadget

import (
	"encoding/hex"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wsrc-go/wsrc/card/sim"
	"github.com/wsrc-go/wsrc/internal/testenv/qemuvm"
	"github.com/wsrc-go/wsrc/internal/testenv/qemuvm/vmscript"
	"github.com/wsrc-go/wsrc/protocol"
	"github.com/wsrc-go/wsrc/test/gadget/internal/lab"
)

// The full-stack pass: wsrc-server, wsrc-agent --backend ccid and the wsrc
// CLI in the lab VM, one boot of each, against gadget readers. First an
// ACR39U gadget that unplugs itself when the user's READ BINARY reaches
// it; plugged in again (a new gadget), the same reader then gets the
// other faults in turn, each set off by the test script or by an APDU
// only the user sends: the card taken out and put back (SIGUSR1 to the
// gadget), a slow APDU answered with time extensions, a mute card, a
// stalled bulk-in endpoint. Last a polled reader (NoInterrupt): card out
// and back in. The script synchronises on the server's answers (wsrc
// list, wsrc apdu rerun until they match), never on time.
const (
	fullStackProfile = "ACR39U"
	pollProfile      = "NoInterrupt"
)

// Names of the full-stack steps (vmscript process names).
const (
	fsGadget  = "fs-gadget"
	fsGadget2 = "fs-gadget2"
	fsGadget3 = "fs-gadget3"
	fsAgent   = "fs-agent"
	fsList    = "fs-list"
	fsAPDU    = "fs-apdu"
	fsUnplug  = "fs-unplug"
	fsGone    = "fs-gone"
	fsBack    = "fs-back"
	fsAPDU2   = "fs-apdu2"

	fsRemoved     = "fs-removed"      // wsrc list until the card is gone
	fsInserted    = "fs-inserted"     // ... until it is back
	fsAPDU3       = "fs-apdu3"        // the reinserted card answers
	fsWTX         = "fs-wtx"          // the slow APDU
	fsMute        = "fs-mute"         // the APDU to the mute card
	fsAfterMute   = "fs-after-mute"   // wsrc apdu until the card answers again
	fsStall       = "fs-stall"        // the APDU whose answer stalls
	fsAfterStall  = "fs-after-stall"  // wsrc apdu until the card answers again
	fsPollGone    = "fs-poll-gone"    // the ACR39U unplugged, its card gone
	fsPollList    = "fs-poll-list"    // the polled reader's card listed
	fsPollRemoved = "fs-poll-removed" // ... gone after SIGUSR1
	fsPollBack    = "fs-poll-back"    // ... back after the next
	fsPollAPDU    = "fs-poll-apdu"    // ... and answers
)

// The user's APDUs that set the gadget's faults off: READ BINARY of 16
// bytes at offsets 1 to 4 of EF 6F99 (byte i = i mod 251), which the
// server's identification never sends (it reads EF.ICCID with
// 00B0000000).
const (
	readBig   = "00b0000110" // unplug
	readSlow  = "00b0000210" // 3 s, time extension every 0.5 s
	readStall = "00b0000310" // bulk-in halted
	readMute  = "00b0000410" // ICC_MUTE
)

// selectBig selects EF 6F99 for the READ BINARYs above.
const selectBig = "00a4000c026f99"

// selectMF is the APDU that shows a card answers.
const selectMF = "00a40004023f00"

// answered matches wsrc apdu's output (all its lines) once a response
// ends in 9000.
const answered = `(?m)^< (?:[0-9a-f]+ )?9000 \(`

// addFullStack appends the full-stack pass to the lab script.
func addFullStack(s *vmscript.Builder) {
	iccid := sim.DefaultICCID
	userURL := fmt.Sprintf("ws://127.0.0.1:%d/", protocol.DefaultUserPort)
	cardURL := fmt.Sprintf("ws://127.0.0.1:%d/", protocol.DefaultCardPort)
	gadget := []string{"ccidgadget", "-profile", fullStackProfile, "-serial", "lab-fullstack", "-timing=false"}
	apdu := func(apdus ...string) []string { return append([]string{"wsrc", "apdu", "--iccid", iccid}, apdus...) }
	s.Start(fsGadget, append(gadget, "-unplug-on", readBig)...).
		Start("fs-server", "wsrc-server",
			"--user-bind-port", fmt.Sprint(protocol.DefaultUserPort),
			"--card-bind-port", fmt.Sprint(protocol.DefaultCardPort)).
		WaitTCP(fmt.Sprintf("127.0.0.1:%d", protocol.DefaultCardPort), 60*time.Second).
		WaitTCP(fmt.Sprintf("127.0.0.1:%d", protocol.DefaultUserPort), 60*time.Second).
		Start(fsAgent, "wsrc-agent", "--server", cardURL, "--backend", "ccid").
		Env("WSRC_SERVER", userURL).
		Until(fsList, 90*time.Second, true, iccid, "wsrc", "list").
		Run(fsAPDU, apdu(selectMF)...).
		Run(fsUnplug, apdu(selectBig, readBig)...).
		Until(fsGone, 30*time.Second, false, iccid, "wsrc", "list").
		Stop(fsGadget).
		Start(fsGadget2, append(gadget, "-slow-on", readSlow, "-delay", "3s", "-wtx", "500ms",
			"-mute-on", readMute, "-stall-on", readStall)...).
		Until(fsBack, 60*time.Second, true, iccid, "wsrc", "list").
		Run(fsAPDU2, apdu(selectMF)...).
		// The card out and back in: NotifySlotChange on the interrupt
		// endpoint.
		Signal(fsGadget2, "USR1").
		Until(fsRemoved, 30*time.Second, false, iccid, "wsrc", "list").
		Signal(fsGadget2, "USR1").
		Until(fsInserted, 60*time.Second, true, iccid, "wsrc", "list").
		Run(fsAPDU3, apdu(selectMF)...).
		Run(fsWTX, apdu(selectBig, readSlow)...).
		Run(fsMute, apdu(selectBig, readMute)...).
		Until(fsAfterMute, 60*time.Second, true, answered, apdu(selectMF)...).
		Run(fsStall, apdu(selectBig, readStall)...).
		Until(fsAfterStall, 60*time.Second, true, answered, apdu(selectMF)...).
		// A polled reader: the same card out and back in.
		Stop(fsGadget2).
		Until(fsPollGone, 30*time.Second, false, iccid, "wsrc", "list").
		Start(fsGadget3, "ccidgadget", "-profile", pollProfile, "-serial", "lab-fullstack-poll", "-timing=false").
		Until(fsPollList, 60*time.Second, true, iccid, "wsrc", "list").
		Signal(fsGadget3, "USR1").
		Until(fsPollRemoved, 30*time.Second, false, iccid, "wsrc", "list").
		Signal(fsGadget3, "USR1").
		Until(fsPollBack, 60*time.Second, true, iccid, "wsrc", "list").
		Run(fsPollAPDU, apdu(selectMF)...).
		Stop(fsAgent).
		Stop("fs-server").
		Stop(fsGadget3)
}

// swRE finds the status word in wsrc apdu's output: "< [data] SW (meaning)".
var swRE = regexp.MustCompile(`^< (?:[0-9a-f]+ )?([0-9a-f]{4}) \(`)

// fullStack is the full-stack pass's console, with helpers; the
// TestGadgetFullStack* tests share it.
type fullStack struct{ con *qemuvm.Console }

func fullStackRun(t *testing.T) fullStack {
	t.Helper()
	labRuns(t)
	fs := fullStack{labVM.con}
	for _, e := range fs.con.Events() {
		if e.Kind == vmscript.KindFail {
			t.Errorf("the lab script stopped at line %s: %s", e.Name, e.Text)
		}
	}
	return fs
}

// out is the output of step name.
func (fs fullStack) out(name string) []string { return fs.con.Output(name) }

// text is the output of step name as one string.
func (fs fullStack) text(name string) string { return strings.Join(fs.out(name), "\n") }

// exit is the exit text of step name ("" if it did not end).
func (fs fullStack) exit(name string) string {
	for _, e := range fs.con.Events() {
		if e.Kind == vmscript.KindExit && e.Name == name {
			return e.Text
		}
	}
	return ""
}

// listed checks that the until step name ended with the card listed
// (want true) or not.
func (fs fullStack) listed(t *testing.T, name string, want bool, what string) {
	t.Helper()
	got := strings.Contains(fs.text(name), sim.DefaultICCID)
	if fs.exit(name) == "" || got != want {
		t.Errorf("%s (%s, exit %q):\n%s", what, name, fs.exit(name), fs.text(name))
	}
}

// failed checks that the user's wsrc apdu step name failed, and logs
// what the user saw.
func (fs fullStack) failed(t *testing.T, name string) {
	t.Helper()
	if exit := fs.exit(name); exit == "0" || exit == "" {
		t.Errorf("%s: exit %q, want an error:\n%s", name, exit, fs.text(name))
	}
	t.Logf("the user saw:\n%s", fs.text(name))
}

// logs logs the programs' output when t failed.
func (fs fullStack) logs(t *testing.T, names ...string) {
	t.Helper()
	if t.Failed() {
		for _, name := range append(names, fsAgent, "fs-server") {
			t.Logf("%s:\n%s", name, fs.text(name))
		}
	}
}

// TestGadgetFullStack runs the real programs against a gadget reader:
// the card is listed with its ICCID, an APDU works; the reader is
// unplugged when the user's next APDU reaches it: the user gets an error
// (and the step ends: nothing hangs), the card leaves the list; plugged in
// again, the card is listed again and answers.
func TestGadgetFullStack(t *testing.T) {
	fs := fullStackRun(t)
	t.Run(fullStackProfile+"/wsrc", func(t *testing.T) {
		if !strings.Contains(fs.text(fsList), sim.DefaultICCID) {
			t.Errorf("wsrc list never showed %s:\n%s", sim.DefaultICCID, fs.text(fsList))
		}
		checkSW(t, fsAPDU, fs.out(fsAPDU), 1)
		fs.failed(t, fsUnplug)
		fs.listed(t, fsGone, false, "the card did not leave the list")
		fs.listed(t, fsBack, true, "the card did not come back after the replug")
		checkSW(t, fsAPDU2, fs.out(fsAPDU2), 1)
		fs.logs(t, fsGadget, fsGadget2)
	})
}

// TestGadgetFullStackRemoval takes the card out of the reader and puts a
// fresh one in, through the real agent and server: the card leaves the
// server's list, comes back, and answers — by NotifySlotChange (ACR39U)
// and by the agent's polling (NoInterrupt).
func TestGadgetFullStackRemoval(t *testing.T) {
	fs := fullStackRun(t)
	t.Run(fullStackProfile+"/wsrc", func(t *testing.T) {
		fs.listed(t, fsRemoved, false, "the removed card did not leave the list")
		fs.listed(t, fsInserted, true, "the inserted card did not come back")
		checkSW(t, fsAPDU3, fs.out(fsAPDU3), 1)
		fs.logs(t, fsGadget2)
	})
	t.Run(pollProfile+"/wsrc", func(t *testing.T) {
		fs.listed(t, fsPollList, true, "the polled reader's card was not listed")
		fs.listed(t, fsPollRemoved, false, "the removed card did not leave the list")
		fs.listed(t, fsPollBack, true, "the inserted card did not come back")
		checkSW(t, fsPollAPDU, fs.out(fsPollAPDU), 1)
		fs.logs(t, fsGadget3)
	})
}

// TestGadgetFullStackTimeExtension sends the user's APDU to a card that
// takes 3 s for it while the reader sends a time extension every 0.5 s:
// the user gets the card's answer, with the right bytes, not an error
// or a time extension taken for the answer.
func TestGadgetFullStackTimeExtension(t *testing.T) {
	fs := fullStackRun(t)
	t.Run(fullStackProfile+"/wsrc", func(t *testing.T) {
		want := wantResponses(t, selectBig, readSlow)
		if got := responses(fs.out(fsWTX)); !slices.Equal(got, want) {
			t.Errorf("the slow APDU's responses:\n got %q\nwant %q\n%s", got, want, fs.text(fsWTX))
		}
		n := 0
		for _, l := range fs.out(fsGadget2) {
			if strings.HasSuffix(l, ": time extension") {
				n++
			}
		}
		// 3 s at one every 0.5 s make 5 or 6; none means the APDU was
		// not the slow one (how many is not asserted: the VM's clock
		// runs as the host lets it).
		if n == 0 {
			t.Errorf("the reader sent no time extension")
		}
		t.Logf("%d time extensions before the answer", n)
		fs.logs(t, fsGadget2)
	})
}

// TestGadgetFullStackMute sends the user's APDU to a card that is mute
// for it (the reader answers ICC_MUTE): the user gets an error at once,
// the agent stays up, and the card answers the next APDU.
func TestGadgetFullStackMute(t *testing.T) {
	fs := fullStackRun(t)
	t.Run(fullStackProfile+"/wsrc", func(t *testing.T) {
		fs.failed(t, fsMute)
		if !strings.Contains(strings.ToLower(fs.text(fsMute)), "mute") {
			t.Errorf("the user's error does not say the card is mute:\n%s", fs.text(fsMute))
		}
		checkSW(t, fsAfterMute, fs.out(fsAfterMute), 1)
		fs.agentUp(t, fsAfterMute)
		fs.logs(t, fsGadget2)
	})
}

// TestGadgetFullStackStall halts the reader's bulk-in endpoint instead of
// answering the user's APDU: the user gets an error, the agent brings the
// reader back (a USB reset: the gadget is configured anew) and the card
// answers again.
func TestGadgetFullStackStall(t *testing.T) {
	fs := fullStackRun(t)
	t.Run(fullStackProfile+"/wsrc", func(t *testing.T) {
		fs.failed(t, fsStall)
		g := fs.out(fsGadget2)
		halted := slices.IndexFunc(g, func(l string) bool { return strings.HasPrefix(l, "log bulk-in halted") })
		switch {
		case halted < 0:
			t.Errorf("the gadget never halted bulk-in")
		case !slices.Contains(g[halted:], "ready"):
			// The agent's USB reset makes the host configure the
			// device anew.
			t.Errorf("the reader was not reset after the stall (no \"ready\" after the halt)")
		}
		checkSW(t, fsAfterStall, fs.out(fsAfterStall), 1)
		fs.agentUp(t, fsAfterStall)
		fs.logs(t, fsGadget2)
	})
}

// agentUp checks that wsrc-agent was still running when step after
// ended: its exit comes only from the script's stop, later.
func (fs fullStack) agentUp(t *testing.T, after string) {
	t.Helper()
	seen := false
	for _, e := range fs.con.Events() {
		if e.Kind != vmscript.KindExit {
			continue
		}
		switch e.Name {
		case after:
			seen = true
		case fsAgent:
			if !seen {
				t.Errorf("wsrc-agent exited (%s) before %s ended", e.Text, after)
			}
			return
		}
	}
}

// responses are the "DATA SW" of wsrc apdu's responses.
func responses(out []string) []string {
	var rs []string
	for _, l := range out {
		if m := rspRE.FindStringSubmatch(l); m != nil {
			rs = append(rs, strings.TrimSpace(m[1]+" "+m[2]))
		}
	}
	return rs
}

// rspRE takes apart wsrc apdu's response line: "< [data] SW (meaning)".
var rspRE = regexp.MustCompile(`^< (?:([0-9a-f]+) )?([0-9a-f]{4}) \(`)

// wantResponses are the responses of the full-stack card, asked
// directly, in responses' format.
func wantResponses(t *testing.T, apdus ...string) []string {
	t.Helper()
	p, ok := lab.Find(fullStackProfile)
	if !ok {
		t.Fatalf("no profile %s", fullStackProfile)
	}
	c := sim.New(p.CardConfig())
	var rs []string
	for _, a := range apdus {
		cmd, err := hex.DecodeString(a)
		if err != nil {
			t.Fatal(err)
		}
		r := c.Process(cmd)
		rs = append(rs, strings.TrimSpace(hex.EncodeToString(r[:len(r)-2])+" "+hex.EncodeToString(r[len(r)-2:])))
	}
	return rs
}

// checkSW fails the test unless name printed want responses, all 9000.
func checkSW(t *testing.T, name string, out []string, want int) {
	t.Helper()
	n := 0
	for _, l := range out {
		if m := swRE.FindStringSubmatch(l); m != nil {
			n++
			if m[1] != "9000" {
				t.Errorf("%s: %s", name, l)
			}
		}
	}
	if n != want {
		t.Errorf("%s: %d responses, want %d: %q", name, n, want, out)
	}
}
