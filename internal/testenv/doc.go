// Package testenv holds, in its subpackages, the test harnesses: code
// that tests use and no binary ships. What lies under internal/testenv
// never ends up in wsrc-server, wsrc-agent or wsrc; everything else
// under internal/ may.
//
//   - qemuvm: boots a Linux kernel under QEMU (TCG) with an initramfs of
//     our own, for the reader tests through a real USB stack
//   - vmtest: what the VM suites (test/qemu, test/gadget) share around
//     qemuvm: prerequisites, guest builds, pcscd + libccid in the image
//   - pcscdtest: a private pcscd with vsmartcard's vpcd
//   - vscard: QEMU's VSCard protocol (the card side of usb-ccid)
//   - wstest: a scripted WebSocket peer
//   - transcript: the recorded pySim session the compatibility replays use
package testenv
