// Package piboot tests the Raspberry Pi image that deploy/pi-image builds.
//
// Two layers:
//
//   - bootconf_test.go runs the image's first-boot configurator
//     (deploy/pi-image/rootfs/usr/lib/wsrc-pi/bootconf, a POSIX shell
//     script) on the build host against a scratch root directory, with
//     systemctl and ssh-keygen replaced by recorders: every setting of
//     /boot/firmware/wsrc-agent.conf, every refusal, and a fuzzer over
//     what ends up in /etc/default/wsrc-agent. Fast; part of `make test`.
//
//   - boot_test.go (TestPiBoot, only with WSRC_PIBOOT=1) boots a copy of
//     the built image, build/pi-image/wsrc-pi-arm64.img, under
//     qemu-system-aarch64 (virt, Cortex-A53, TCG) with the kernel and
//     initrd from its own boot partition and the whole image as the disk.
//     The test writes wsrc-agent.conf on the copy's FAT partition (mtools)
//     and adds, with debugfs, an arm64 wsrc-server and wsrc, the server's
//     units from systemd/, and a check unit that prints "@@piboot" markers
//     on the serial console: the card of `wsrc-agent --sim 1` is listed,
//     the agent unit is active, an agent restart registers the card anew,
//     and a server killed with SIGKILL is restarted by systemd and the
//     agent reconnects. The guest has no network device at all.
package piboot
