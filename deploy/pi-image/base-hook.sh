#!/bin/sh
# base-hook.sh essential|customize CHROOT — mmdebstrap hooks of build.sh's
# base step (see there). Runs on the build host as root; commands inside
# the arm64 tree run under qemu-user through binfmt_misc.
#
#   essential  before the non-essential packages are installed: divert
#              update-initramfs to a no-op, so the initramfs is built once
#              at the end instead of after every package that triggers it
#              (each run costs minutes under qemu-user).
#   customize  after all packages: raspi-firmware's settings (root by
#              label, serial and HDMI consoles), the diversion removed, the
#              initramfs built; its post-update hook copies kernel, initrd,
#              device trees and firmware to /boot/firmware and writes
#              config.txt and cmdline.txt, as on an installed system.
set -eu

step=$1
r=$2

case $step in
essential)
    chroot "$r" dpkg-divert --quiet --local --rename \
        --divert /usr/sbin/update-initramfs.wsrc-pi --add /usr/sbin/update-initramfs
    mkdir -p "$r/usr/sbin"
    cat >"$r/usr/sbin/update-initramfs" <<'EOF'
#!/bin/sh
# Placeholder while the image's packages are installed (base-hook.sh).
echo "update-initramfs: deferred until the end of the image build" >&2
exit 0
EOF
    chmod 755 "$r/usr/sbin/update-initramfs"
    ;;
customize)
    # Debian's raspi images boot the root file system by label and put a
    # console on the serial port of the Pi 3/4 (ttyS1, the mini UART on
    # GPIO 14/15) and on HDMI; the last console gets the boot messages.
    # CMA=0 leaves the kernel's default: no cma= (a fixed 64M cma= keeps a
    # Pi 4 from booting, and this headless image needs no GPU memory).
    cat >"$r/etc/default/raspi-firmware" <<'EOF'
# Written by the WSRC image build (deploy/pi-image/base-hook.sh); the
# settings are described in raspi-firmware's original of this file.
ROOTPART=LABEL=RASPIROOT
CONSOLES="tty0 ttyS1,115200"
CMA=0
EOF
    rm -f "$r/usr/sbin/update-initramfs"
    chroot "$r" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs
    for k in "$r"/boot/vmlinuz-*; do
        v=${k##*/vmlinuz-}
        chroot "$r" update-initramfs -c -k "$v"
    done
    for f in config.txt cmdline.txt start4.elf bootcode.bin; do
        [ -s "$r/boot/firmware/$f" ] || { echo "base-hook: raspi-firmware left no /boot/firmware/$f" >&2; exit 1; }
    done
    ls "$r"/boot/firmware/initrd.img-* "$r"/boot/firmware/vmlinuz-* "$r"/boot/firmware/bcm2711-rpi-4-b.dtb >/dev/null
    ;;
*)
    echo "usage: $0 essential|customize CHROOT" >&2
    exit 2
    ;;
esac
