package qemu

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/wsrc-go/wsrc/card/sim"
	"github.com/wsrc-go/wsrc/internal/testenv/qemuvm/vmscript"
	"github.com/wsrc-go/wsrc/internal/testenv/vmtest"
	"github.com/wsrc-go/wsrc/protocol"
)

// TestQEMUFullStack runs the real programs in the guest, so that no
// traffic leaves the VM: wsrc-server, wsrc-agent --backend ccid on the two
// emulated readers, and the wsrc CLI as the user. It checks that both cards
// are listed with their ICCID (and EID), that APDUs and reset work, and
// that a card removed over VSCard leaves the list and comes back when it
// is re-inserted.
func TestQEMUFullStack(t *testing.T) {
	p := vmtest.Need(t)
	t.Parallel()
	needFullStack(t)
	initrd := buildImage(t, p, image{
		name: "fullstack",
		binaries: map[string]string{
			"wsrc-server": vmtest.GoBuild(t, "github.com/wsrc-go/wsrc/cmd/wsrc-server", false),
			"wsrc-agent":  vmtest.GoBuild(t, "github.com/wsrc-go/wsrc/cmd/wsrc-agent", true),
			"wsrc":        vmtest.GoBuild(t, "github.com/wsrc-go/wsrc/cmd/wsrc", false),
		},
	})
	a, b := cardA.ICCID, cardB.ICCID
	userURL := fmt.Sprintf("ws://127.0.0.1:%d/", protocol.DefaultUserPort)
	cardURL := fmt.Sprintf("ws://127.0.0.1:%d/", protocol.DefaultCardPort)
	var s vmscript.Builder
	s.Modules(usbModules...).
		WaitUSB(2, 0x0b, 60*time.Second).
		Start("server", "wsrc-server",
			"--user-bind-port", fmt.Sprint(protocol.DefaultUserPort),
			"--card-bind-port", fmt.Sprint(protocol.DefaultCardPort)).
		WaitTCP(fmt.Sprintf("127.0.0.1:%d", protocol.DefaultCardPort), 60*time.Second).
		WaitTCP(fmt.Sprintf("127.0.0.1:%d", protocol.DefaultUserPort), 60*time.Second).
		Start("agent", "wsrc-agent", "--server", cardURL, "--backend", "ccid").
		Env("WSRC_SERVER", userURL).
		Until("list", 90*time.Second, true, fmt.Sprintf("(?s)(%s.*%s|%s.*%s)", a, b, b, a), "wsrc", "list").
		Run("apdu-a", "wsrc", "apdu", "--iccid", a, "00a40004023f00").
		Run("apdu-b", "wsrc", "apdu", "--iccid", b, "00a40000022fe2", "00b000000a").
		Run("reset-a", "wsrc", "reset", "--iccid", a).
		Run("apdu-a2", "wsrc", "apdu", "--iccid", a, "00a40004023f00").
		Mark("remove-a").
		Until("gone-a", 90*time.Second, false, a, "wsrc", "list").
		Mark("insert-a").
		Until("back-a", 90*time.Second, true, a, "wsrc", "list").
		Run("apdu-a3", "wsrc", "apdu", "--iccid", a, "00a40004023f00")
	tv := boot(t, p, initrd, s.String(), sim.New(cardA), sim.New(cardB))
	ctx, cancel := context.WithTimeout(context.Background(), vmTimeout)
	defer cancel()

	list := strings.Join(tv.exit(t, "list"), "\n")
	for _, want := range []string{a, b, cardA.EID, "QEMU USB CCID"} {
		if !strings.Contains(list, want) {
			t.Errorf("wsrc list lacks %s:\n%s", want, list)
		}
	}
	for _, name := range []string{"apdu-a", "apdu-b", "apdu-a2"} {
		checkSW(t, name, tv.exit(t, name))
	}
	if out := tv.exit(t, "reset-a"); !strings.Contains(strings.ToUpper(strings.Join(out, " ")), fmt.Sprintf("%X", sim.ATRT0)) {
		t.Errorf("wsrc reset did not print the ATR %X: %q", sim.ATRT0, out)
	}

	tv.mark(t, "remove-a")
	must(t, tv.readers[0].client.Remove(ctx))
	tv.mark(t, "insert-a")
	must(t, tv.readers[0].client.Insert(ctx, tv.readers[0].card))
	tv.exit(t, "back-a")
	checkSW(t, "apdu-a3", tv.exit(t, "apdu-a3"))
	tv.done(t)
}

// swRE finds the status word in wsrc apdu's text output: "< [data] SW (meaning)".
var swRE = regexp.MustCompile(`^< (?:[0-9a-f]+ )?([0-9a-f]{4}) \(`)

// checkSW fails the test unless every response of a wsrc apdu run ends
// with 9000.
func checkSW(t *testing.T, name string, out []string) {
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
	if n == 0 {
		t.Errorf("%s: no response in %q", name, out)
	}
}

// needFullStack skips the test, naming what is missing, until the programs
// it runs exist: cmd/wsrc-server, and cmd/wsrc-agent with the ccid
// backend built in. It skips under CI too: this is unfinished project
// work, not a missing machine prerequisite.
func needFullStack(t *testing.T) {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	var missing []string
	for _, cmd := range []string{"wsrc-server", "wsrc-agent", "wsrc"} {
		if m, _ := filepath.Glob(filepath.Join(root, "cmd", cmd, "*.go")); len(m) == 0 {
			missing = append(missing, "cmd/"+cmd+" does not exist yet")
		}
	}
	if len(missing) == 0 {
		agent := vmtest.GoBuild(t, "github.com/wsrc-go/wsrc/cmd/wsrc-agent", true)
		help, _ := exec.Command(agent, "--help").CombinedOutput()
		if !ccidBackendReady(string(help)) {
			missing = append(missing, "wsrc-agent has no ccid backend yet (its --help says: not built in)")
		}
	}
	if len(missing) > 0 {
		t.Skipf("full-stack VM test waits for: %s", strings.Join(missing, "; "))
	}
}

// ccidBackendReady reads wsrc-agent's help: the backend is missing while
// its "ccid" line says "not built in". Any other help counts as ready, so
// that a reworded help runs the test (and fails loudly if it must) rather
// than skipping it for ever.
func ccidBackendReady(help string) bool {
	for _, l := range strings.Split(help, "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == "ccid" && strings.Contains(l, "not built in") {
			return false
		}
	}
	return true
}
