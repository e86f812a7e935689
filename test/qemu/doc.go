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
// Guest programs live in guest/: usbapdu (raw usbfs, proves the harness),
// loopcheck (the guest's loopback network), ccidwatch (the ccid package
// over gousb and libusb). The full-stack test runs the real cmd/ binaries.
package qemu
