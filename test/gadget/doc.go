// Package gadget is the reader lab: CCID readers made of the test VM's own
// USB device side (dummy_hcd + GadgetFS), each presenting a real reader's
// descriptor and VID:PID (lab.Profiles), driven through the real kernel
// USB stack by Debian's pcscd + libccid — the reference host driver, which
// no one here wrote — and by our ccid package over gousb and libusb.
//
//	test process ──builds──► initramfs: vminit, guest/ccidgadget, guest/oracle, pcscd, libccid
//	VM (one boot, TCG): for each profile, for each host (libccid, wsrc):
//	    ccidgadget -profile P   GadgetFS device; ccidsim's reader logic; card/sim cards;
//	                            prints every PC_to_RDR message it receives ("rx ...")
//	    oracle -host H          lab.Script on the first card through that host ("step ...")
//	    (gadget stopped: the host sees the reader unplugged)
//
// TestGadgetScript/<profile>/<host> checks each host's responses against
// the card asked directly; TestGadgetNegotiation/<profile>/<host> checks
// what each host negotiated (voltage, PPS, SetParameters, IFSD) from the
// gadget's record, and that both hosts agree. After the profiles the same
// VM runs the fault scenarios through the real kernel: TestGadgetUnplug
// (the reader unplugged while an APDU is in flight), TestGadgetRemoval
// (card out and back in, by interrupt endpoint and by polling),
// TestGadgetMute (a mute card, both hosts), and more. Last, the
// full-stack pass runs wsrc-server, wsrc-agent --backend ccid and the
// wsrc CLI against gadget readers: TestGadgetFullStack (unplug under the
// user's APDU, replug), TestGadgetFullStackRemoval (interrupt endpoint
// and polling), TestGadgetFullStackTimeExtension, TestGadgetFullStackMute,
// TestGadgetFullStackStall. One VM serves every subtest (about 100 s of
// VM time plus the builds).
//
// Run with
//
//	scripts/fetch-kernel.sh              # once: the guest kernel, into build/qemu
//	go test -v ./test/gadget/
//
// It skips (with the reason) without qemu-system-x86_64, the kernel, pcscd
// or libccid, and fails instead under CI=true. WSRC_GADGET_PROFILES=A,B
// limits the lab to some profiles, WSRC_GADGET_RECORD=1 logs every message
// the gadget received, ORACLE_PCSCD_DEBUG=1 shows pcscd's debug log.
package gadget
