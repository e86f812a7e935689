// Package qemu holds the end-to-end tests of the USB CCID path: each test
// boots a Debian kernel in QEMU with emulated usb-ccid readers whose cards
// (card/sim) this test process serves over VSCard, runs real programs in
// the guest, and reads their results from the serial console.
//
// Run them with
//
//	scripts/fetch-kernel.sh          # once: the guest kernel, into build/qemu
//	go test ./test/qemu/ -run TestQEMU -v
//
// They skip (with the reason) when qemu-system-x86_64 or the kernel is
// missing, and fail instead when CI=true. -short skips them too.
//
// Guest programs live in guest/: usbapdu (raw usbfs through
// guest/internal/rawccid, proves the harness), loopcheck (the guest's
// loopback network), ccidwatch (the ccid package over gousb and libusb),
// apdubench (per-APDU timing through one stack: raw usbfs, the ccid
// package, or pcscd + libccid through the pcsc package). The full-stack
// test runs the real cmd/ binaries.
//
// TestQEMUBenchCCIDvsPCSC compares the direct driver with pcscd + libccid
// on the same emulated reader (pcscd and libccid are copied from the host
// into the guest). In a plain run it is a quick correctness check; with
// WSRC_VM_BENCH=1 it is the benchmark behind docs/performance.md ("CCID in
// a VM"). WSRC_VM_QEMU_ARGS adds arguments to every VM's QEMU, e.g. trace
// options for profiling.
package qemu
