#!/usr/bin/env bash
# fetch-kernel.sh [DIR] — put Debian's stock amd64 kernel where the QEMU
# end-to-end tests (test/qemu, internal/testenv/qemuvm) look for it, without
# installing it: `apt-get download` + `dpkg-deb -x`, no update-initramfs.
#
# Result (DIR defaults to build/qemu under the repository root):
#   DIR/kernel/<kver>/vmlinuz                 the bzImage as shipped
#   DIR/kernel/<kver>/vmlinux                 its xz payload unpacked: boots
#                                             through PVH, ~2 s faster under TCG
#   DIR/kernel/<kver>/lib/modules/<kver>/...  modules.dep and the USB modules
#
# Needs apt-get (Debian's package lists; `apt-get update` is run if the
# download fails), dpkg-deb, and xz for the vmlinux (optional). Idempotent:
# a complete cache is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build/qemu}
meta=${KERNEL_META:-linux-image-amd64}

# Test packages running in parallel (test/qemu, test/gadget) may both
# fetch on a fresh clone: one fetches, the other waits and finds it done.
mkdir -p "$dir"
exec 9>"$dir/.fetch.lock"
flock 9

pkg=$(apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
if [[ -z $pkg ]]; then
    apt-get update -qq
    pkg=$(apt-cache depends "$meta" | awk '/Depends: linux-image-/ {print $2; exit}')
fi
[[ -n $pkg ]] || { echo "fetch-kernel: cannot resolve $meta to a kernel package" >&2; exit 1; }
kver=${pkg#linux-image-}
out=$dir/kernel/$kver
if [[ -f $out/.complete ]]; then
    echo "fetch-kernel: $out is already there"
    exit 0
fi

tmp=$(mktemp -d -t wsrc-kernel.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
# As root, apt-get would drop to the _apt user, who cannot write to $tmp.
download() { (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root "$pkg"); }
if ! download; then
    apt-get update -qq
    download
fi
dpkg-deb -x "$tmp"/*.deb "$tmp/root"

rm -rf "$out"
mkdir -p "$out/lib/modules/$kver/kernel/drivers"
cp "$tmp/root/boot/vmlinuz-$kver" "$out/vmlinuz"
mods=$tmp/root/lib/modules/$kver
[[ -d $mods ]] || mods=$tmp/root/usr/lib/modules/$kver
# Keep the module indexes and the USB drivers only: the whole tree is
# ~400 MB, the tests need four modules.
cp "$mods"/modules.* "$out/lib/modules/$kver/"
cp -r "$mods/kernel/drivers/usb" "$out/lib/modules/$kver/kernel/drivers/"

# The bzImage carries the kernel as an xz stream; unpacked it is an ELF
# with a PVH entry note that QEMU boots directly.
if command -v xz >/dev/null; then
    off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$out/vmlinuz" | head -1 | cut -d: -f1 || true)
    if [[ -n $off ]]; then
        tail -c +$((off + 1)) "$out/vmlinuz" | xz -dcq > "$out/vmlinux" 2>/dev/null || true
        if [[ $(head -c 4 "$out/vmlinux" | od -An -tx1 | tr -d ' ') != 7f454c46 ]]; then
            echo "fetch-kernel: could not unpack a vmlinux; the tests will boot the bzImage" >&2
            rm -f "$out/vmlinux"
        fi
    fi
fi
touch "$out/.complete"
echo "fetch-kernel: $pkg in $out ($(du -sh "$out" | cut -f1))"
