#!/usr/bin/env bash
# deps.sh PROFILE... — install the Debian packages a make target needs,
# after checking which are already there. Runs apt-get as root or via sudo.
#
# Profiles:
#   build  what compiling the three programs needs (cgo: libusb, pcsclite)
#   test   build + the real third-party stacks the tests drive:
#          pcscd with vsmartcard's vpcd and PC/SC tools as its users
#          (scriptor from pcsc-tools, opensc-tool from opensc), QEMU for the usb-ccid VM test,
#          systemd's analyzers for the units, Chromium for the status page,
#          tshark to decode APDU traces, Python websockets (a pySim-like
#          client that sends URL credentials as HTTP Basic), PyYAML for
#          the cloud-init example
#   deb    the package checks: lintian, shellcheck, dpkg-dev
set -euo pipefail

declare -A profile
profile[build]="gcc libc6-dev pkg-config libusb-1.0-0-dev libpcsclite-dev"
profile[test]="${profile[build]} pcscd vsmartcard-vpcd pcsc-tools opensc libccid qemu-system-x86 xz-utils systemd chromium tshark python3-websockets python3-yaml lintian shellcheck dpkg-dev file binutils"
profile[deb]="lintian shellcheck dpkg-dev file binutils python3-yaml systemd"

want=()
for p in "$@"; do
    [[ -n "${profile[$p]:-}" ]] || { echo "deps.sh: unknown profile '$p' (build, test, deb)" >&2; exit 2; }
    want+=(${profile[$p]})
done

missing=()
for pkg in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]} == 0)); then
    exit 0
fi

if ! command -v apt-get >/dev/null; then
    echo "deps.sh: missing packages (${missing[*]}) and no apt-get: install them by hand" >&2
    exit 1
fi
sudo=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "deps.sh: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    sudo=(sudo)
fi
echo "deps.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if [[ " ${missing[*]} " == *" tshark "* ]]; then
    # tshark asks whether non-root users may capture; we only read files.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | "${sudo[@]}" debconf-set-selections
fi
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
