package qemu

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/wsrc-go/wsrc/card/sim"
	"github.com/wsrc-go/wsrc/internal/testenv/qemuvm/vmscript"
	"github.com/wsrc-go/wsrc/internal/testenv/vmtest"
	"github.com/wsrc-go/wsrc/internal/testenv/vscard"
)

// Cards of the driver tests: an eUICC answering like T=0 (61xx, GET
// RESPONSE) and a plain UICC without ISD-R. Both announce T=0: QEMU's
// usb-ccid offers only T=0, and the driver rightly refuses a T=1-only
// card there.
var (
	cardA = sim.Config{ICCID: "89882800000000000011", EID: "89049032000000000000000000000011", T0GetResponse: true}
	cardB = sim.Config{ICCID: "89882800000000000022", EID: sim.NoEID}
)

// TestQEMUCCIDDriver runs the project's ccid package (gousb, libusb) in
// the guest against two emulated readers: both cards are identified, then
// the card of reader 0 is removed and re-inserted over VSCard and the
// driver reports both changes and identifies it again.
func TestQEMUCCIDDriver(t *testing.T) {
	p := vmtest.Need(t)
	t.Parallel()
	initrd := buildImage(t, p, image{
		name:     "ccid",
		binaries: map[string]string{"ccidwatch": vmtest.GoBuild(t, "github.com/wsrc-go/wsrc/test/qemu/guest/ccidwatch", true)},
	})
	var s vmscript.Builder
	s.Modules(usbModules...).
		WaitUSB(2, 0x0b, 60*time.Second).
		Run("watch", "ccidwatch", "-identify", "3", "-timeout", "90s")
	tv := boot(t, p, initrd, s.String(), sim.New(cardA), sim.New(cardB))
	ctx, cancel := context.WithTimeout(context.Background(), vmTimeout)
	defer cancel()
	con := tv.vm.Console()
	prefix := func(p string) func(string) bool { return func(l string) bool { return strings.HasPrefix(l, p) } }

	if _, err := con.AwaitOutput(ctx, "watch", prefix("count 2")); err != nil {
		t.Fatal(err)
	}
	out := con.Output("watch")
	whereA := identified(t, out, "iccid="+cardA.ICCID+" eid="+cardA.EID)
	identified(t, out, "iccid="+cardB.ICCID+" eid=")
	if got := value(out, "apdu "+whereA+" "); got != "9000" {
		t.Errorf("SELECT MF on card A answered %q", got)
	}
	if got := value(out, "reset "+whereA+" atr "); got != fmt.Sprintf("%X", sim.ATRT0) {
		t.Errorf("cold reset of card A gave ATR %q, want %X", got, sim.ATRT0)
	}

	if err := tv.readers[0].client.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := con.AwaitOutput(ctx, "watch", prefix("removed "+whereA)); err != nil {
		t.Fatal(err)
	}
	if err := tv.readers[0].client.Insert(ctx, tv.readers[0].card); err != nil {
		t.Fatal(err)
	}
	tv.exit(t, "watch")
	tv.done(t)
	if n := strings.Count(strings.Join(con.Output("watch"), "\n"), "identified "+whereA+" iccid="+cardA.ICCID); n != 2 {
		t.Errorf("card A identified %d times, want 2 (before removal and after re-insertion)", n)
	}
}

// identified returns the "<reader>/<slot>" of the identified line that
// ends with suffix; it fails the test when there is none.
func identified(t *testing.T, out []string, suffix string) string {
	t.Helper()
	for _, l := range out {
		if rest, ok := strings.CutPrefix(l, "identified "); ok && strings.HasSuffix(rest, " "+suffix) {
			return strings.TrimSuffix(rest, " "+suffix)
		}
	}
	t.Fatalf("no card identified with %q in:\n%s", suffix, strings.Join(out, "\n"))
	return ""
}

var _ vscard.Card = (*sim.Card)(nil)
