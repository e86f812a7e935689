#!/usr/bin/env bash
# cross-build.sh [build|test|deps|all] — build the Raspberry Pi binaries on a
# Debian amd64 machine, and run the pure-Go tests under qemu-user.
#
#   build (default)  wsrc-server, pure Go (CGO_ENABLED=0), for linux/arm64,
#                    linux/arm GOARM=6 and GOARM=7; wsrc-agent with cgo
#                    (libusb-1.0, libpcsclite) for arm64 and armhf (GOARM=7),
#                    into build/cross/; each output is checked with `file`
#                    (architecture, static vs. dynamic, interpreter), the
#                    agent's NEEDED libraries and ARM attributes with
#                    readelf, and started once (--version) under qemu-user
#                    on the oldest Pi CPU of its target.
#   test             go test of the pure-Go packages ($CROSS_TEST_PKGS,
#                    default ./protocol/... ./card/...) for linux/arm64 and
#                    linux/arm GOARM=7 under qemu-aarch64-static /
#                    qemu-arm-static (go test -exec; no binfmt needed).
#   deps             only install what is missing (see below).
#   all              build, then test.
#
# Missing Debian packages are installed first, as root or via sudo, after a
# check: the arm64/armhf foreign architectures (dpkg --add-architecture),
# the cross compilers gcc-aarch64-linux-gnu and gcc-arm-linux-gnueabihf,
# libusb-1.0-0-dev and libpcsclite-dev for :arm64 and :armhf, file,
# binutils for readelf, and qemu-user-static (for `test`, and to start
# each built binary once on the oldest Pi CPU of its target).
#
# 32-bit ARM: Debian's armhf is ARMv7 + VFPv3 (Thumb-2), so the cgo agent
# linked against it runs on ARMv7 and later only: Raspberry Pi 2, 3, 4, 5,
# Zero 2 W (on a 32-bit OS; the arm64 build for a 64-bit OS). The ARMv6
# boards (Pi 1, Zero, Zero W) get the pure-Go server (GOARM=6) only; an
# agent for them must be built on Raspberry Pi OS itself (its armhf is built
# for ARMv6), e.g. `make build` on the Pi. Debian's armel (ARMv5, soft-float
# ABI) does not match Raspberry Pi OS's libraries either.
#
# Environment: GO (go), OUT (build/cross), VERSION (git describe),
# CROSS_TEST_PKGS, CROSS_TEST_ARCHES ("arm64 armv7"), SERVER_PKG and
# AGENT_PKG (./cmd/wsrc-server, ./cmd/wsrc-agent), GOFLAGS as usual.
set -euo pipefail
cd "$(dirname "$0")/.."

GO=${GO:-go}
OUT=${OUT:-build/cross}
VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
LDFLAGS="-s -w -X github.com/wsrc-go/wsrc/internal/version.Version=$VERSION"
CROSS_TEST_PKGS=${CROSS_TEST_PKGS:-./protocol/... ./card/... ./agent ./agent/simbackend ./ccid/t1 ./server}
SERVER_PKG=${SERVER_PKG:-./cmd/wsrc-server}
AGENT_PKG=${AGENT_PKG:-./cmd/wsrc-agent}
CROSS_TEST_ARCHES=${CROSS_TEST_ARCHES:-arm64 armv7}

# Per target: GOARCH, GOARM, Debian multiarch triplet / architecture,
# the `file` description, and the dynamic loader.
declare -A goarch=([arm64]=arm64 [armv6]=arm [armv7]=arm)
declare -A goarm=([arm64]="" [armv6]=6 [armv7]=7)
declare -A triplet=([arm64]=aarch64-linux-gnu [armv7]=arm-linux-gnueabihf)
declare -A debarch=([arm64]=arm64 [armv7]=armhf)
declare -A elf=([arm64]="ELF 64-bit LSB .*ARM aarch64" [armv6]="ELF 32-bit LSB .*ARM, EABI5" [armv7]="ELF 32-bit LSB .*ARM, EABI5")
declare -A loader=([arm64]=/lib/ld-linux-aarch64.so.1 [armv7]=/lib/ld-linux-armhf.so.3)
declare -A qemu=([arm64]=qemu-aarch64-static [armv6]=qemu-arm-static [armv7]=qemu-arm-static)
# The oldest Raspberry Pi CPU of each target, for the smoke runs: Pi 3
# (Cortex-A53, arm64), Pi 2 (Cortex-A7), Pi 1 / Zero (ARM1176, ARMv6).
declare -A cpu=([arm64]=cortex-a53 [armv6]=arm1176 [armv7]=cortex-a7)

SERVER_TARGETS=(arm64 armv6 armv7)
AGENT_TARGETS=(arm64 armv7)

log() { printf '%s\n' "cross-build: $*" >&2; }
die() { log "$*"; exit 1; }

# usec: the wall clock in microseconds.
usec() { local t=${EPOCHREALTIME/[.,]/}; echo "$((10#$t))"; }

# timed NAME CMD...: run CMD and report how long it took.
timed() {
    local name=$1 start
    shift
    start=$(usec)
    "$@"
    local ms=$((($(usec) - start) / 1000))
    log "$(printf '%-38s %4d.%01d s' "$name" $((ms / 1000)) $((ms % 1000 / 100)))"
}

sudo_cmd=()
as_root() {
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || die "need root or sudo to run: $*"
        sudo_cmd=(sudo)
    fi
    "${sudo_cmd[@]}" "$@"
}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# deps: install what build and test need, if it is missing.
deps() {
    command -v dpkg >/dev/null || die "not a Debian system: install cross compilers and arm64/armhf libusb and pcsclite by hand"
    local want=(file binutils gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf
        libc6-dev-arm64-cross libc6-dev-armhf-cross pkg-config qemu-user-static)
    local a
    for a in arm64 armhf; do
        want+=("libusb-1.0-0-dev:$a" "libpcsclite-dev:$a")
    done

    local foreign need_update=0
    foreign=$(dpkg --print-foreign-architectures)
    for a in arm64 armhf; do
        if ! grep -qx "$a" <<<"$foreign"; then
            log "adding dpkg architecture $a"
            as_root dpkg --add-architecture "$a"
            need_update=1
        fi
    done
    local missing=() p
    for p in "${want[@]}"; do
        installed "$p" || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # A mirror in mid-sync can fail one index (e.g. bookworm-security's
    # armhf list) while the packages we need are fine: try once more, then
    # let apt-get install decide.
    as_root apt-get update -qq || as_root apt-get update -qq ||
        log "apt-get update reported errors; trying the install anyway"
    as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    : "$need_update"
}

# check FILE TARGET static|dynamic: the binary is what we meant to build.
check() {
    local f=$1 t=$2 kind=$3 desc
    desc=$(file -b "$f")
    grep -Eq "${elf[$t]}" <<<"$desc" || die "$f: not ${elf[$t]}: $desc"
    if [[ $kind == static ]]; then
        grep -q 'statically linked' <<<"$desc" || die "$f: not statically linked: $desc"
        return
    fi
    grep -q 'dynamically linked' <<<"$desc" || die "$f: not dynamically linked: $desc"
    grep -q "interpreter ${loader[$t]}" <<<"$desc" || die "$f: interpreter is not ${loader[$t]}: $desc"
    local needed lib
    needed=$(readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
    for lib in libusb-1.0.so.0 libpcsclite.so.1 libc.so.6; do
        grep -qx "$lib" <<<"$needed" || die "$f: does not link $lib (NEEDED: $(tr '\n' ' ' <<<"$needed"))"
    done
    if [[ $t == armv7 ]]; then
        # Debian armhf: ARMv7, hard-float calling convention.
        local attrs
        attrs=$(readelf -A "$f")
        grep -q 'Tag_CPU_arch: v7' <<<"$attrs" || die "$f: not ARMv7 code: $attrs"
        grep -q 'Tag_ABI_VFP_args: VFP registers' <<<"$attrs" || die "$f: not hard-float: $attrs"
    fi
}

# smoke FILE TARGET: the binary starts under qemu-user on the oldest
# Raspberry Pi CPU of its target (libraries resolve from the installed
# :arm64 / :armhf packages, instructions are valid there). Exit status 0-2
# counts (--version may not exist everywhere yet); a signal, an exec or
# loader failure does not.
smoke() {
    local f=$1 t=$2 q=${qemu[$2]} rc=0 out
    command -v "$q" >/dev/null || die "$q missing (run: $0 deps)"
    out=$("$q" -cpu "${cpu[$t]}" "$f" --version 2>&1) || rc=$?
    ((rc <= 2)) || die "$f does not run on ${cpu[$t]} (exit $rc): $out"
    log "  $(basename "$f") on ${cpu[$t]}: ${out%%$'\n'*}"
}

build_server() {
    local t=$1 out="$OUT/wsrc-server-linux-$1"
    CGO_ENABLED=0 GOOS=linux GOARCH=${goarch[$t]} GOARM=${goarm[$t]} \
        "$GO" build -trimpath -ldflags "$LDFLAGS" -o "$out" "$SERVER_PKG"
    check "$out" "$t" static
    smoke "$out" "$t"
}

build_agent() {
    local t=$1 out="$OUT/wsrc-agent-linux-$1" tr=${triplet[$1]}
    command -v "$tr-gcc" >/dev/null || die "$tr-gcc missing (run: $0 deps)"
    # The host's pkg-config, pointed at the target's multiarch .pc files;
    # the Debian cross compilers search /usr/include/<triplet> and
    # /usr/lib/<triplet> themselves.
    CGO_ENABLED=1 GOOS=linux GOARCH=${goarch[$t]} GOARM=${goarm[$t]} CC="$tr-gcc" \
        PKG_CONFIG_LIBDIR="/usr/lib/$tr/pkgconfig:/usr/share/pkgconfig" PKG_CONFIG_PATH='' \
        "$GO" build -trimpath -ldflags "$LDFLAGS" -o "$out" "$AGENT_PKG"
    check "$out" "$t" dynamic
    smoke "$out" "$t"
}

build() {
    mkdir -p "$OUT"
    local t
    for t in "${SERVER_TARGETS[@]}"; do
        timed "wsrc-server linux/$t (pure Go)" build_server "$t"
    done
    for t in "${AGENT_TARGETS[@]}"; do
        timed "wsrc-agent linux/$t (cgo, ${debarch[$t]})" build_agent "$t"
    done
    (cd "$OUT" && file wsrc-server-* wsrc-agent-*) >&2
    # What the header says about the ARMv6 boards, shown rather than told.
    local rc=0
    "${qemu[armv7]}" -cpu arm1176 "$OUT/wsrc-agent-linux-armv7" --version >/dev/null 2>&1 || rc=$?
    if ((rc > 128)); then
        log "as expected, the armhf agent does not run on an ARMv6 CPU (arm1176: signal $((rc - 128)))"
    else
        log "note: the armhf agent ran on arm1176 (exit $rc); the ARMv7-only note above may be stale"
    fi
}

test_arch() {
    local t=$1 q=${qemu[$1]}
    command -v "$q" >/dev/null || die "$q missing (run: $0 deps)"
    # shellcheck disable=SC2086 # the package list is meant to split
    CGO_ENABLED=0 GOOS=linux GOARCH=${goarch[$t]} GOARM=${goarm[$t]} \
        "$GO" test -count=1 -exec "$q" $CROSS_TEST_PKGS
}

run_tests() {
    local t
    for t in $CROSS_TEST_ARCHES; do
        [[ -n ${qemu[$t]:-} ]] || die "no qemu for '$t' (arm64, armv7)"
        timed "go test linux/$t under qemu" test_arch "$t"
    done
}

# Each step on a line of its own: errexit does not apply inside a function
# called on the left of && or ||.
main() {
    local cmd=${1:-build} start
    start=$(usec)
    case $cmd in
    build)
        timed "deps" deps
        build
        ;;
    test)
        timed "deps" deps
        run_tests
        ;;
    all)
        timed "deps" deps
        build
        run_tests
        ;;
    deps) deps ;;
    -h | --help | help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        return
        ;;
    *) die "unknown command '$cmd' (build, test, all, deps)" ;;
    esac
    local ms=$((($(usec) - start) / 1000))
    log "$(printf '%-38s %4d.%01d s' "total ($cmd)" $((ms / 1000)) $((ms % 1000 / 100)))"
}

main "$@"
