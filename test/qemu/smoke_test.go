package qemu

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"testing"
	"time"

	"github.com/wsrc-go/wsrc/card/sim"
	"github.com/wsrc-go/wsrc/internal/testenv/qemuvm/vmscript"
	"github.com/wsrc-go/wsrc/internal/testenv/vmtest"
	"github.com/wsrc-go/wsrc/internal/testenv/vscard"
)

// TestQEMUSmoke proves the harness: a static guest program sends one APDU
// through usbfs to each of two emulated readers, and the simulated cards
// served from here answer; and the guest's loopback network works.
func TestQEMUSmoke(t *testing.T) {
	p := vmtest.Need(t)
	t.Parallel()
	initrd := buildImage(t, p, image{
		name: "smoke",
		binaries: map[string]string{
			"usbapdu":   vmtest.GoBuild(t, "github.com/wsrc-go/wsrc/test/qemu/guest/usbapdu", false),
			"loopcheck": vmtest.GoBuild(t, "github.com/wsrc-go/wsrc/test/qemu/guest/loopcheck", false),
		},
	})
	var s vmscript.Builder
	s.Modules(usbModules...).
		WaitUSB(2, 0x0b, 60*time.Second).
		Run("apdu", "usbapdu", "00A40004022FE2"). // SELECT EF.ICCID
		Run("loop", "loopcheck")
	cards := []vscard.Card{
		sim.New(sim.Config{ICCID: "89882800000000000011"}),
		sim.New(sim.Config{ICCID: "89882800000000000022"}),
	}
	tv := boot(t, p, initrd, s.String(), cards...)
	out := tv.exit(t, "apdu")
	if loop := tv.exit(t, "loop"); !contains(loop, "loopback ok") {
		t.Errorf("guest loopback: %q", loop)
	}
	tv.done(t)

	for i, c := range cards {
		want := fmt.Sprintf("reader %d atr %X", i, c.ATR())
		if !contains(out, want) {
			t.Errorf("missing %q in %q", want, out)
		}
	}
	for i := range cards {
		resp := value(out, fmt.Sprintf("reader %d resp ", i))
		b, err := hex.DecodeString(resp)
		if err != nil || len(b) < 2 || !bytes.HasSuffix(b, []byte{0x90, 0x00}) {
			t.Errorf("reader %d: SELECT EF.ICCID answered %q", i, resp)
		}
	}
}
