// Package ccidsim simulates USB CCID readers at the driver's USB seam,
// for tests and benchmarks of package ccid and of the agent: a Bus with
// hotplug (pass it as ccid.Options.Bus), readers built from the
// descriptors of models seen in SIM labs (OMNIKEY 3x21, SCR3310,
// IDBridge CT30, ACR38U, ACR39U, sysmoOCTSIM, QEMU's usb-ccid, a reader
// without interrupt endpoint, a composite device, ...), and slots that
// hold cards (card/sim's *sim.Card fits the Card interface).
//
// The reader side is implemented independently of the host side it
// tests: each simulated reader answers every PC_to_RDR message the way
// its exchange level demands (T=0 TPDUs passed to the card, the card end
// of T=1 run by t1.CardSide, extended APDUs chained by wLevelParameter),
// performs PPS when its descriptor says it does (and lets the card
// judge a host's PPS otherwise), checks that the host's SetParameters
// match what the card negotiated (a mismatch shows as parity errors),
// reports insertion and removal on the interrupt endpoint, and refuses a
// second command on a busy slot. Faults are injected per reader (hangs,
// stale frames, wrong bSeq, pcscd holding the interface, no permission)
// and per card (mute, slow with or without time extensions, PPS
// rejected, voltage classes, removal in the middle of a command).
package ccidsim
