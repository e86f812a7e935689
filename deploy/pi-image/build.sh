#!/usr/bin/env bash
# deploy/pi-image/build.sh [all|image|base|rootfs|compress|deps|test-deps] — build the
# WSRC Raspberry Pi SD-card image (arm64: Pi 3, 4, 400, Zero 2 W, CM3/CM4)
# from Debian's packages, the way Debian's own raspi images are made
# (raspi-team/image-specs), with mmdebstrap instead of vmdb2 and without
# loop devices, so it runs in containers and CI.
#
#   base      mmdebstrap an arm64 Debian tree (packages in ./packages, from
#             main and non-free-firmware) into $OUT/base; base-hook.sh builds
#             the initramfs once and lets raspi-firmware fill /boot/firmware.
#             Skipped while its inputs are unchanged ($OUT/base.stamp).
#   rootfs    copy base to $OUT/rootfs, add ./rootfs (first-boot units and
#             scripts, network, fstab), install the agent (the .deb from
#             deploy/nfpm when built, else the cross-built binary and the
#             units from systemd/), and split /boot/firmware off into
#             $OUT/bootfs together with ./bootfs (wsrc-agent.conf).
#   image     $OUT/wsrc-pi-arm64.img: MBR, FAT32 "RASPIFIRM" (firmware,
#             kernel, initrd, config.txt, cmdline.txt, wsrc-agent.conf) and
#             ext4 "RASPIROOT", both written straight into the image file
#             (mkfs.fat --offset, mke2fs -d -E offset); then a manifest.
#   compress  $OUT/wsrc-pi-arm64.img.xz and SHA256SUMS.
#   all       (default) base, rootfs, image, compress.
#   deps      install what is missing and register qemu-aarch64 in
#             binfmt_misc (the arm64 maintainer scripts run under
#             qemu-user-static); every other step does this first too.
#   test-deps install what the boot test (test/piboot) needs:
#             qemu-system-arm (qemu-system-aarch64), mtools, e2fsprogs.
#
# Needs root (mmdebstrap --mode=root, chroot, file ownership in the tree)
# and Debian's archive over the network; downloads are kept in
# $OUT/apt-cache, so a rebuild fetches only what changed.
#
# Environment: OUT (build/pi-image), SUITE (bookworm), MIRROR
# (http://deb.debian.org/debian), SECURITY_MIRROR
# (http://deb.debian.org/debian-security), SOURCE_DATE_EPOCH (time of the
# last commit), AGENT_DEB (default: newest build/deb/wsrc-agent_*_arm64.deb),
# AGENT_BIN (default build/cross/wsrc-agent-linux-arm64, built with
# scripts/cross-build.sh when missing), BOOT_MIB (512, as Raspberry Pi OS;
# a kernel and its initrd take 70 MB, twice while one is upgraded), VERSION.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT_DIR=$(pwd)
HERE=$ROOT_DIR/deploy/pi-image

OUT=${OUT:-build/pi-image}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH
BOOT_MIB=${BOOT_MIB:-512}
NAME=wsrc-pi-arm64
IMG=$OUT/$NAME.img

# Fixed identifiers, so that two builds of the same inputs differ as little
# as possible: the MBR disk id ("WSRC"), the FAT volume id, the ext4 UUID
# and directory hash seed.
DISK_ID=0x57535243
FAT_ID=57535243
ROOT_UUID=5753520c-7069-4000-8000-000000000002
HASH_SEED=5753520c-7069-4000-8000-00000000a5ed
# Partition 1 starts at 4 MiB (erase-block aligned, as Debian's images do).
P1_START=8192

log() { printf '%s\n' "pi-image: $*" >&2; }
die() { log "$*"; exit 1; }

usec() { local t=${EPOCHREALTIME/[.,]/}; echo "$((10#$t))"; }
timed() {
    local name=$1 start ms
    shift
    start=$(usec)
    "$@"
    ms=$((($(usec) - start) / 1000))
    log "$(printf '%-10s %5d.%01d s' "$name" $((ms / 1000)) $((ms % 1000 / 100)))"
}

# clean DIR: remove a tree a killed mmdebstrap may have left with /dev,
# /proc and /sys mounted inside; never follow into a mount.
clean() {
    local m
    findmnt -rn -o TARGET | grep -F "$1/" | sort -r | while read -r m; do umount -l "$m"; done
    rm -rf --one-file-system "$1"
}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# deps: host packages, and qemu-aarch64 registered with binfmt_misc.
deps() {
    [[ $(id -u) -eq 0 ]] || die "run as root (mmdebstrap --mode=root, chroot, mke2fs -d with root-owned files)"
    command -v dpkg >/dev/null || die "needs a Debian or Ubuntu host"
    local want=(mmdebstrap qemu-user-static arch-test dosfstools mtools fdisk e2fsprogs xz-utils
        debian-archive-keyring) missing=() p
    for p in "${want[@]}"; do installed "$p" || missing+=("$p"); done
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        # A mirror in mid-sync can fail one index we do not need.
        apt-get update -qq || apt-get update -qq || log "apt-get update reported errors; trying the install anyway"
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    binfmt
}

# test_deps: what test/piboot's TestPiBoot runs on the host.
test_deps() {
    local want=(qemu-system-arm mtools e2fsprogs) missing=() p
    for p in "${want[@]}"; do installed "$p" || missing+=("$p"); done
    ((${#missing[@]})) || return 0
    [[ $(id -u) -eq 0 ]] || die "run as root to install ${missing[*]}"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || apt-get update -qq || log "apt-get update reported errors; trying the install anyway"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# binfmt: let the kernel run arm64 ELF files through qemu-aarch64-static.
# Containers and CI machines often have binfmt_misc unmounted and nothing
# registered; systemd-binfmt or binfmt-support would do it on a full host.
binfmt() {
    local bm=/proc/sys/fs/binfmt_misc conf=/usr/lib/binfmt.d/qemu-aarch64.conf
    [[ -e $bm/status ]] || mount -t binfmt_misc binfmt_misc "$bm" ||
        die "cannot mount binfmt_misc (a container needs --privileged for this)"
    if [[ ! -e $bm/qemu-aarch64 ]]; then
        [[ -r $conf ]] || die "$conf missing (qemu-user-static too old?)"
        log "registering qemu-aarch64 in binfmt_misc"
        cat "$conf" >"$bm/register"
    fi
    [[ $(cat "$bm/qemu-aarch64") == enabled* ]] || echo 1 >"$bm/qemu-aarch64"
    arch-test arm64 >/dev/null || die "arm64 binaries do not run here even with qemu-aarch64 registered"
}

# packages: the list in ./packages, comma-separated, without comments.
packages() { sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$HERE/packages" | tr -d ' \t' | paste -sd, -; }

sources() {
    local comp="main non-free-firmware"
    printf 'deb %s %s %s\n' "$MIRROR" "$SUITE" "$comp" "$MIRROR" "$SUITE-updates" "$comp" \
        "$SECURITY_MIRROR" "$SUITE-security" "$comp"
}

base_stamp() {
    {
        # Not SOURCE_DATE_EPOCH: every commit would throw the tree away.
        printf '%s\n' "$SUITE" "$MIRROR" "$SECURITY_MIRROR"
        cat "$HERE/packages" "$HERE/base-hook.sh"
        mmdebstrap --version
    } | sha256sum | cut -d' ' -f1
}

# base: the Debian tree, rebuilt only when its inputs change.
base() {
    local stamp
    stamp=$(base_stamp)
    if [[ -d $OUT/base && -f $OUT/base.stamp && $(cat "$OUT/base.stamp") == "$stamp" ]]; then
        log "base: up to date ($OUT/base)"
        return
    fi
    clean "$OUT/base"
    rm -f "$OUT/base.stamp"
    mkdir -p "$OUT/apt-cache"
    sources >"$OUT/sources.list"
    # shellcheck disable=SC2016 # $1 is mmdebstrap's, for the hook.
    # --skip=essential/unlink keeps the essential .debs in the cache too;
    # sync-out saves every downloaded package for the next build.
    mmdebstrap --mode=root --format=directory --architectures=arm64 --variant=minbase \
        --include="$(packages)" \
        --aptopt='Acquire::Retries "3"' \
        --skip=essential/unlink \
        --setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
        --setup-hook="sync-in '$OUT/apt-cache' /var/cache/apt/archives/" \
        --essential-hook="'$HERE/base-hook.sh' essential \"\$1\"" \
        --customize-hook="'$HERE/base-hook.sh' customize \"\$1\"" \
        --customize-hook="sync-out /var/cache/apt/archives '$OUT/apt-cache'" \
        "$SUITE" "$OUT/base" "$OUT/sources.list"
    echo "$stamp" >"$OUT/base.stamp"
}

# agent_payload: sets AGENT_MODE (deb or bin) and AGENT_FILE.
agent_payload() {
    if [[ -n ${AGENT_DEB:-} ]]; then
        [[ -f $AGENT_DEB ]] || die "AGENT_DEB=$AGENT_DEB: no such file"
        AGENT_MODE=deb AGENT_FILE=$AGENT_DEB
        return
    fi
    local deb
    deb=$(find build/deb -maxdepth 1 -name 'wsrc-agent_*_arm64.deb' 2>/dev/null | sort -V | tail -n1)
    if [[ -n $deb ]]; then
        AGENT_MODE=deb AGENT_FILE=$deb
        return
    fi
    AGENT_MODE=bin AGENT_FILE=${AGENT_BIN:-build/cross/wsrc-agent-linux-arm64}
    if [[ ! -f $AGENT_FILE ]]; then
        log "no agent .deb in build/deb and no $AGENT_FILE: cross-building"
        scripts/cross-build.sh build
    fi
    [[ -f $AGENT_FILE ]] || die "$AGENT_FILE missing after scripts/cross-build.sh build"
}

# install_agent ROOTFS: the agent package, or its parts as the package
# would lay them out (systemd/README.md).
install_agent() {
    local r=$1
    agent_payload
    if [[ $AGENT_MODE == deb ]]; then
        log "rootfs: installing $AGENT_FILE"
        cp "$AGENT_FILE" "$r/tmp/wsrc-agent.deb"
        # Its dependencies (libusb, libpcsclite) are in ./packages already.
        chroot "$r" dpkg -i /tmp/wsrc-agent.deb ||
            die "installing $AGENT_FILE failed: a dependency missing from deploy/pi-image/packages?"
        rm -f "$r/tmp/wsrc-agent.deb"
        return
    fi
    log "rootfs: no .deb yet: installing $AGENT_FILE and the units from systemd/"
    install -D -m755 "$AGENT_FILE" "$r/usr/bin/wsrc-agent"
    install -D -m644 -t "$r/usr/lib/systemd/system" systemd/wsrc-agent.service
    install -D -m644 systemd/wsrc.sysusers.conf "$r/usr/lib/sysusers.d/wsrc.conf"
    install -D -m644 systemd/60-wsrc-agent.rules "$r/usr/lib/udev/rules.d/60-wsrc-agent.rules"
    install -D -m644 systemd/wsrc-agent.polkit.rules "$r/usr/share/polkit-1/rules.d/60-wsrc-agent.rules"
    install -D -m644 systemd/default/wsrc-agent "$r/etc/default/wsrc-agent"
    chroot "$r" systemd-sysusers /usr/lib/sysusers.d/wsrc.conf
}

# rootfs: base + our files + the agent; /boot/firmware goes to bootfs.
rootfs() {
    [[ -d $OUT/base ]] || die "no $OUT/base: run '$0 base' first"
    local r=$OUT/rootfs b=$OUT/bootfs
    clean "$r"
    clean "$b"
    cp -a "$OUT/base" "$r"
    # Our files, owned by root whoever checked them out.
    cp -r --no-preserve=ownership "$HERE/rootfs/." "$r/"
    chmod 755 "$r"/usr/lib/wsrc-pi/*
    install_agent "$r"
    # The agent starts once the boot partition's wsrc-agent.conf names a
    # server (wsrc-pi-bootconf enables it); ssh once it is asked for.
    chroot "$r" systemctl disable wsrc-agent.service ssh.service 2>/dev/null || true
    # wpa_supplicant@wlan0 joins Wi-Fi when asked to; the D-Bus one is unused.
    chroot "$r" systemctl disable wpa_supplicant.service 2>/dev/null || true
    chroot "$r" systemctl enable wsrc-pi-bootconf.service wsrc-pi-growroot.service \
        systemd-networkd.service systemd-resolved.service systemd-timesyncd.service
    # Every card generates its own ssh host keys (when ssh is enabled).
    rm -f "$r"/etc/ssh/ssh_host_*
    ln -sfn ../run/systemd/resolve/stub-resolv.conf "$r/etc/resolv.conf"
    # No RTC on a Pi: systemd never sets the clock before this at boot, so
    # TLS certificates can be checked before NTP answers (systemd >= 247).
    touch -d "@$SOURCE_DATE_EPOCH" "$r/usr/lib/clock-epoch"
    mkdir -p "$r/var/lib/systemd/timesync"
    touch -d "@$SOURCE_DATE_EPOCH" "$r/var/lib/systemd/timesync/clock"
    chroot "$r" chown systemd-timesync:systemd-timesync /var/lib/systemd/timesync /var/lib/systemd/timesync/clock 2>/dev/null || true
    {
        echo "WSRC_PI_VERSION=$VERSION"
        echo "WSRC_PI_SUITE=$SUITE"
        echo "WSRC_PI_BUILT=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)"
        echo "WSRC_PI_AGENT=$AGENT_MODE:$(basename "$AGENT_FILE")"
    } >"$r/etc/wsrc-pi-release"
    # The FAT partition: firmware, kernel, initrd, DTBs, config.txt and
    # cmdline.txt from raspi-firmware, plus our files.
    mkdir -p "$b"
    mv "$r"/boot/firmware/* "$b/"
    cp -r --no-preserve=ownership "$HERE/bootfs/." "$b/"
    [[ -f $b/cmdline.txt && -f $b/config.txt ]] || die "raspi-firmware wrote no cmdline.txt/config.txt"
    # No modification time after SOURCE_DATE_EPOCH (our files, the agent).
    # Inode change times cannot be set; mke2fs -d copies them, so two
    # builds still differ there (and in FAT creation times).
    find "$r" "$b" -newermt "@$SOURCE_DATE_EPOCH" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
    log "rootfs: cmdline.txt: $(cat "$b/cmdline.txt")"
}

# image: partition table, FAT and ext4 written into one file.
image() {
    local r=$OUT/rootfs b=$OUT/bootfs
    [[ -d $r && -d $b ]] || die "no $r: run '$0 rootfs' first"
    local used root_mib p2_start root_sectors total
    used=$(du -s --apparent-size -B1M "$r" | cut -f1)
    # 25 % and 256 MiB of room (journal, inodes, the first apt upgrade);
    # the first boot grows the file system to the whole card anyway.
    root_mib=$(((used * 5 / 4 + 256 + 3) / 4 * 4))
    p2_start=$((P1_START + BOOT_MIB * 2048))
    root_sectors=$((root_mib * 2048))
    total=$(((p2_start + root_sectors) * 512))
    rm -f "$IMG"
    truncate -s "$total" "$IMG"
    sfdisk --quiet --no-reread --no-tell-kernel "$IMG" <<EOF
label: dos
label-id: $DISK_ID
unit: sectors
start=$P1_START, size=$((BOOT_MIB * 2048)), type=c
start=$p2_start, size=$root_sectors, type=83
EOF
    # FAT32: same time stamps on every file, volume id fixed. 4 KiB
    # clusters; below 65525 clusters (256 MiB) it would be FAT16 in all
    # but name, and mtools (and others) would read it as such.
    ((BOOT_MIB >= 260)) || die "BOOT_MIB=$BOOT_MIB: FAT32 with 4 KiB clusters needs 260 MiB or more"
    find "$b" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
    # The block count is the partition's, smaller than the image file:
    # mkfs.fat warns about that ("block count mismatch"), which is meant.
    local out
    out=$(mkfs.fat -F 32 -s 8 -n RASPIFIRM -i "$FAT_ID" -h "$P1_START" --offset "$P1_START" "$IMG" $((BOOT_MIB * 1024)) 2>&1) ||
        die "mkfs.fat failed: $out"
    out=$(grep -v -e '^mkfs\.fat ' -e '^Warning: block count mismatch' <<<"$out" || true)
    [[ -z $out ]] || log "mkfs.fat: $out"
    TZ=UTC MTOOLS_SKIP_CHECK=1 mcopy -s -p -m -i "$IMG@@$((P1_START * 512))" "$b"/* ::/
    # ext4 from the directory; features fixed by our mke2fs.conf, not the
    # host's, and time stamps fixed by E2FSPROGS_FAKE_TIME.
    MKE2FS_CONFIG=$HERE/mke2fs.conf E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH \
        mke2fs -q -F -t ext4 -L RASPIROOT -U "$ROOT_UUID" -m 1 \
        -E "offset=$((p2_start * 512)),hash_seed=$HASH_SEED,root_owner=0:0" \
        -d "$r" "$IMG" "${root_mib}M"
    # What is in it, for CVE checks and diffs between builds.
    # shellcheck disable=SC2016 # dpkg-query's format, not the shell's.
    chroot "$r" dpkg-query -W -f='${Package}\t${Version}\t${Architecture}\n' >"$OUT/$NAME.manifest"
    log "image: $IMG ($((total / 1048576)) MiB: boot ${BOOT_MIB} MiB, root ${root_mib} MiB, ${used} MiB used)"
}

compress() {
    [[ -f $IMG ]] || die "no $IMG: run '$0 image' first"
    xz -T0 -6 -c "$IMG" >"$IMG.xz.tmp"
    mv "$IMG.xz.tmp" "$IMG.xz"
    (cd "$OUT" && sha256sum "$NAME.img" "$NAME.img.xz" >SHA256SUMS)
    log "compress: $IMG.xz ($(($(stat -c %s "$IMG.xz") / 1048576)) MiB)"
}

main() {
    local step=${1:-all}
    case $step in
    deps) timed deps deps ;;
    test-deps) test_deps ;;
    base) deps && timed base base ;;
    rootfs) deps && timed rootfs rootfs ;;
    image) deps && timed base base && timed rootfs rootfs && timed image image ;;
    compress) timed compress compress ;;
    all) deps && timed base base && timed rootfs rootfs && timed image image && timed compress compress ;;
    *) die "usage: $0 [all|image|base|rootfs|compress|deps|test-deps]" ;;
    esac
}

main "$@"
