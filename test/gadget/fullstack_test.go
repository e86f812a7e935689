package gadget

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/wsrc-go/wsrc/card/sim"
	"github.com/wsrc-go/wsrc/internal/testenv/qemuvm/vmscript"
	"github.com/wsrc-go/wsrc/protocol"
)

// The full-stack pass: wsrc-server, wsrc-agent --backend ccid and the wsrc
// CLI in the lab VM, with an ACR39U gadget that unplugs itself when the
// user's READ BINARY reaches it, and is plugged in again afterwards.
const fullStackProfile = "ACR39U"

// Names of the full-stack steps (vmscript process names).
const (
	fsGadget  = "fs-gadget"
	fsGadget2 = "fs-gadget2"
	fsList    = "fs-list"
	fsAPDU    = "fs-apdu"
	fsUnplug  = "fs-unplug"
	fsGone    = "fs-gone"
	fsBack    = "fs-back"
	fsAPDU2   = "fs-apdu2"
)

// readBig is the user's APDU the gadget unplugs on: READ BINARY of 16
// bytes at offset 1 of EF 6F99, which the server's identification never
// sends (it reads EF.ICCID with 00B0000000).
const readBig = "00b0000110"

// addFullStack appends the full-stack pass to the lab script.
func addFullStack(s *vmscript.Builder) {
	iccid := sim.DefaultICCID
	userURL := fmt.Sprintf("ws://127.0.0.1:%d/", protocol.DefaultUserPort)
	cardURL := fmt.Sprintf("ws://127.0.0.1:%d/", protocol.DefaultCardPort)
	gadget := []string{"ccidgadget", "-profile", fullStackProfile, "-serial", "lab-fullstack", "-timing=false"}
	s.Start(fsGadget, append(gadget, "-unplug-on", readBig)...).
		Start("fs-server", "wsrc-server",
			"--user-bind-port", fmt.Sprint(protocol.DefaultUserPort),
			"--card-bind-port", fmt.Sprint(protocol.DefaultCardPort)).
		WaitTCP(fmt.Sprintf("127.0.0.1:%d", protocol.DefaultCardPort), 60*time.Second).
		WaitTCP(fmt.Sprintf("127.0.0.1:%d", protocol.DefaultUserPort), 60*time.Second).
		Start("fs-agent", "wsrc-agent", "--server", cardURL, "--backend", "ccid").
		Env("WSRC_SERVER", userURL).
		Until(fsList, 90*time.Second, true, iccid, "wsrc", "list").
		Run(fsAPDU, "wsrc", "apdu", "--iccid", iccid, "00a40004023f00").
		Run(fsUnplug, "wsrc", "apdu", "--iccid", iccid, "00a4000c026f99", readBig).
		Until(fsGone, 30*time.Second, false, iccid, "wsrc", "list").
		Stop(fsGadget).
		Start(fsGadget2, gadget...).
		Until(fsBack, 60*time.Second, true, iccid, "wsrc", "list").
		Run(fsAPDU2, "wsrc", "apdu", "--iccid", iccid, "00a40004023f00").
		Stop("fs-agent").
		Stop("fs-server").
		Stop(fsGadget2)
}

// swRE finds the status word in wsrc apdu's output: "< [data] SW (meaning)".
var swRE = regexp.MustCompile(`^< (?:[0-9a-f]+ )?([0-9a-f]{4}) \(`)

// TestGadgetFullStack runs the real programs against a gadget reader:
// the card is listed with its ICCID, an APDU works; the reader is
// unplugged when the user's next APDU reaches it: the user gets an error
// (and the step ends: nothing hangs), the card leaves the list; plugged in
// again, the card is listed again and answers.
func TestGadgetFullStack(t *testing.T) {
	labRuns(t)
	con := labVM.con
	exit := func(name string) string {
		for _, e := range con.Events() {
			if e.Kind == vmscript.KindExit && e.Name == name {
				return e.Text
			}
		}
		return ""
	}
	t.Run(fullStackProfile+"/wsrc", func(t *testing.T) {
		out := con.Output
		for _, e := range con.Events() {
			if e.Kind == vmscript.KindFail {
				t.Errorf("the lab script stopped at line %s: %s", e.Name, e.Text)
			}
		}
		if !strings.Contains(strings.Join(out(fsList), "\n"), sim.DefaultICCID) {
			t.Errorf("wsrc list never showed %s:\n%s", sim.DefaultICCID, strings.Join(out(fsList), "\n"))
		}
		checkSW(t, fsAPDU, out(fsAPDU), 1)
		unplug := strings.Join(out(fsUnplug), "\n")
		if exit := exit(fsUnplug); exit == "0" || exit == "" {
			t.Errorf("the APDU during the unplug: exit %q, want an error:\n%s", exit, unplug)
		}
		t.Logf("the user saw:\n%s", unplug)
		if exit := exit(fsGone); exit == "" || strings.Contains(strings.Join(out(fsGone), "\n"), sim.DefaultICCID) {
			t.Errorf("the card did not leave the list:\n%s", strings.Join(out(fsGone), "\n"))
		}
		if !strings.Contains(strings.Join(out(fsBack), "\n"), sim.DefaultICCID) {
			t.Errorf("the card did not come back after the replug:\n%s", strings.Join(out(fsBack), "\n"))
		}
		checkSW(t, fsAPDU2, out(fsAPDU2), 1)
		if t.Failed() {
			for _, name := range []string{fsGadget, fsGadget2, "fs-agent", "fs-server"} {
				t.Logf("%s:\n%s", name, strings.Join(out(name), "\n"))
			}
		}
	})
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
