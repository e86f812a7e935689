#!/usr/bin/env bash
# package.sh [all|deps|build|package] — build the Debian packages wsrc-agent,
# wsrc-server and wsrc for amd64, arm64 and armhf into build/deb/.
#
#   all (default)  deps, build, package.
#   deps           install what is missing: the native build packages
#                  (scripts/deps.sh build) and, for arm64/armhf, the cross
#                  toolchains and :arm64/:armhf libraries
#                  (scripts/cross-build.sh deps). As root or via sudo.
#   build          the binaries, into $DEB_OUT/bin/<debian arch>/, for
#                  linux/amd64, arm64 and arm: wsrc-server and wsrc static
#                  pure Go (armhf: GOARM=6, every Raspberry Pi), wsrc-agent
#                  with cgo against the target's multiarch libusb and
#                  pcsclite, as a hardened PIE (armhf: GOARM=7, Pi 2 and
#                  later, since Debian's armhf libraries are ARMv7; see
#                  scripts/cross-build.sh for the ARMv6 boards).
#                  test/deb checks the binaries (file, readelf, qemu-user).
#   package        nfpm ($NFPM_VERSION, built into $DEB_OUT/tools, nothing
#                  installed globally) packs deploy/nfpm/<package>.yaml per
#                  architecture into $DEB_OUT/<package>_<version>_<arch>.deb,
#                  after removing the .debs of earlier runs.
#
# Versions: VERSION is the programs' version string (git describe, as in
# the Makefile); DEB_VERSION the packages' version, derived from the last
# v* tag: v1.2.3 → 1.2.3, 3 commits later → 1.2.3+git3.<hash>, v1.3.0-rc1
# → 1.3.0~rc1; without a tag 0.0~git<commit count>.<hash>; a tree with
# uncommitted changes adds +dirty. File times are SOURCE_DATE_EPOCH (the
# last commit's time), so two runs on one commit give the same packages.
#
# Environment: GO, DEB_OUT (build/deb), DEB_ARCHES ("amd64 arm64 armhf"),
# VERSION, DEB_VERSION, DEB_MAINTAINER, SOURCE_DATE_EPOCH.
set -euo pipefail
cd "$(dirname "$0")/.."

GO=${GO:-go}
NFPM_VERSION=v2.45.2 # v2.46+ needs go.digitalxero.dev modules, which the Go proxy refuses (403)
DEB_OUT=${DEB_OUT:-build/deb}
DEB_ARCHES=${DEB_ARCHES:-amd64 arm64 armhf}
DEB_MAINTAINER=${DEB_MAINTAINER:-WSRC maintainers <maintainers@users.noreply.r-seed-3789495f.example>}
PACKAGES=(wsrc-agent wsrc-server wsrc)
MODULE=github.com/wsrc-go/wsrc

log() { printf '%s\n' "package: $*" >&2; }
die() { log "$*"; exit 1; }

in_git() { git rev-parse --git-dir >/dev/null 2>&1; }

VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
LDFLAGS="-s -w -X $MODULE/internal/version.Version=$VERSION"

# deb_version: the Debian version of the checked-out tree (see the header).
deb_version() {
    in_git || die "not a git checkout: set DEB_VERSION"
    local desc v dirty=""
    git diff --quiet HEAD -- 2>/dev/null || dirty="+dirty"
    if desc=$(git describe --tags --match 'v[0-9]*' 2>/dev/null); then
        desc=${desc#v}
        if [[ $desc =~ ^(.*)-([0-9]+)-g([0-9a-f]+)$ ]]; then
            v="${BASH_REMATCH[1]//-/\~}+git${BASH_REMATCH[2]}.${BASH_REMATCH[3]}"
        else
            v=${desc//-/\~}
        fi
    else
        v="0.0~git$(git rev-list --count HEAD).$(git rev-parse --short=7 HEAD)"
    fi
    printf '%s%s\n' "$v" "$dirty"
}

DEB_VERSION=${DEB_VERSION:-$(deb_version)}
dpkg --validate-version "$DEB_VERSION" || die "bad DEB_VERSION '$DEB_VERSION'"
if [[ -z ${SOURCE_DATE_EPOCH:-} ]]; then
    SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH

wants_arm() { [[ " $DEB_ARCHES " == *" arm64 "* || " $DEB_ARCHES " == *" armhf "* ]]; }

deps() {
    scripts/deps.sh build
    if wants_arm; then
        scripts/cross-build.sh deps
    fi
}

# Per Debian architecture: GOARCH, GOARM of the pure-Go programs, GOARM
# of the agent, the C cross compiler (cgo), and the multiarch triplet.
declare -A goarch=([amd64]=amd64 [arm64]=arm64 [armhf]=arm)
declare -A goarm=([amd64]="" [arm64]="" [armhf]=6)
declare -A agent_goarm=([amd64]="" [arm64]="" [armhf]=7)
declare -A triplet=([amd64]=x86_64-linux-gnu [arm64]=aarch64-linux-gnu [armhf]=arm-linux-gnueabihf)

# The agent links C (libusb, pcsclite): built as a position-independent
# executable with Debian's hardening flags (lintian: hardening-no-pie,
# -bindnow, -no-fortify-functions); the static pure-Go programs have no C.
AGENT_CFLAGS="-O2 -g -D_FORTIFY_SOURCE=2 -fstack-protector-strong -fstack-clash-protection"
AGENT_LDFLAGS="-Wl,-z,relro -Wl,-z,now"

# gobuild OUT PKG [ENV...]: go build with the release flags and extra
# environment ENV.
gobuild() {
    local out=$1 pkg=$2
    shift 2
    env "$@" "$GO" build -trimpath -ldflags "$LDFLAGS" -o "$out" "$pkg"
}

# build_arch A: wsrc-server, wsrc and wsrc-agent for Debian architecture A.
build_arch() {
    local a=$1 bin=$DEB_OUT/bin/$1 tr=${triplet[$1]} cc=gcc
    local target=(GOOS=linux "GOARCH=${goarch[$a]}")
    if [[ $a != "$(dpkg --print-architecture)" ]]; then
        cc=$tr-gcc
        command -v "$cc" >/dev/null || die "$cc missing (run: $0 deps)"
    fi
    mkdir -p "$bin"
    gobuild "$bin/wsrc-server" ./cmd/wsrc-server "${target[@]}" "GOARM=${goarm[$a]}" CGO_ENABLED=0
    gobuild "$bin/wsrc" ./cmd/wsrc "${target[@]}" "GOARM=${goarm[$a]}" CGO_ENABLED=0
    # The host's pkg-config pointed at the target's multiarch .pc files
    # (as scripts/cross-build.sh does); the Debian cross compilers find
    # the target's headers and libraries themselves.
    GOFLAGS="${GOFLAGS:+$GOFLAGS }-buildmode=pie" \
        gobuild "$bin/wsrc-agent" ./cmd/wsrc-agent "${target[@]}" "GOARM=${agent_goarm[$a]}" \
        CGO_ENABLED=1 CC="$cc" CGO_CFLAGS="$AGENT_CFLAGS" CGO_LDFLAGS="$AGENT_LDFLAGS" \
        PKG_CONFIG_LIBDIR="/usr/lib/$tr/pkgconfig:/usr/share/pkgconfig" PKG_CONFIG_PATH=
}

build() {
    local a
    for a in $DEB_ARCHES; do
        case $a in amd64 | arm64 | armhf) ;; *) die "unknown architecture '$a' (amd64, arm64, armhf)" ;; esac
    done
    for a in $DEB_ARCHES; do
        log "building $a"
        build_arch "$a"
    done
}

# nfpm: the pinned nfpm, built once into $DEB_OUT/tools.
nfpm() {
    local tools=$DEB_OUT/tools
    [[ $tools == /* ]] || tools=$PWD/$tools # GOBIN must be absolute
    if [[ ! -x $tools/nfpm-$NFPM_VERSION ]]; then
        log "building nfpm $NFPM_VERSION into $DEB_OUT/tools"
        mkdir -p "$tools"
        GOBIN=$tools GOFLAGS='' "$GO" install "github.com/goreleaser/nfpm/v2/cmd/nfpm@$NFPM_VERSION"
        mv "$tools/nfpm" "$tools/nfpm-$NFPM_VERSION"
    fi
    "$tools/nfpm-$NFPM_VERSION" "$@"
}

# changelogs: a one-entry Debian changelog per package (lintian wants one;
# native packages, i.e. without a Debian revision, name it changelog.gz).
changelogs() {
    local p dir date commit
    date=$(date -R -u -d "@$SOURCE_DATE_EPOCH")
    commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
    for p in "${PACKAGES[@]}"; do
        dir=$DEB_OUT/work/doc/$p
        mkdir -p "$dir"
        printf '%s (%s) unstable; urgency=medium\n\n  * Built from commit %s (%s).\n\n -- %s  %s\n' \
            "$p" "$DEB_VERSION" "$commit" "$VERSION" "$DEB_MAINTAINER" "$date" |
            gzip -9n >"$dir/changelog.gz"
        touch -d "@$SOURCE_DATE_EPOCH" "$dir/changelog.gz"
    done
}

package() {
    local a p
    for a in $DEB_ARCHES; do
        for p in wsrc-agent wsrc-server wsrc; do
            [[ -x $DEB_OUT/bin/$a/$p ]] || die "$DEB_OUT/bin/$a/$p missing (run: $0 build)"
        done
    done
    rm -f "$DEB_OUT"/*.deb
    changelogs
    for a in $DEB_ARCHES; do
        for p in "${PACKAGES[@]}"; do
            DEB_ARCH=$a DEB_BIN=$DEB_OUT/bin/$a DEB_WORK=$DEB_OUT/work \
                DEB_VERSION=$DEB_VERSION DEB_MAINTAINER=$DEB_MAINTAINER \
                nfpm package --config "deploy/nfpm/$p.yaml" --packager deb --target "$DEB_OUT/" >/dev/null
        done
    done
    log "version $DEB_VERSION (programs: $VERSION)"
    (cd "$DEB_OUT" && ls -l -- *.deb) >&2
}

case ${1:-all} in
all)
    deps
    build
    package
    ;;
deps) deps ;;
build) build ;;
package) package ;;
-h | --help | help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
*) die "unknown command '$1' (all, deps, build, package)" ;;
esac
