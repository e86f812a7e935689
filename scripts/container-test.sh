#!/usr/bin/env bash
# container-test.sh — build the wsrc-server image and run test/container
# against it. Starts a Docker daemon for the test when none is running
# (and stops it again afterwards): without a bridge or iptables rules, as
# the test runs the container on the host's network with loopback binds,
# so nothing leaves 127.0.0.1. Installs Debian's docker.io when there is
# no dockerd.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}

if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then
    sudo=(); [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends docker.io
fi

pid=""
if ! docker info >/dev/null 2>&1; then
    log=$(mktemp -t dockerd.XXXXXX.log)
    dockerd --bridge=none --iptables=false --ip6tables=false >"$log" 2>&1 &
    pid=$!
    trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true' EXIT
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        kill -0 "$pid" 2>/dev/null || { echo "dockerd failed to start:"; cat "$log"; exit 1; }
        sleep 0.5
    done
    docker info >/dev/null 2>&1 || { echo "dockerd did not come up in 30 s:"; cat "$log"; exit 1; }
fi

WSRC_CONTAINER_TEST=1 $GO test -count=1 -v ./test/container
