#!/usr/bin/env bash
# build.sh [prebuilt|source] [TAG] — build the wsrc-server container image
# (deploy/container/Dockerfile), tagged TAG (default wsrc-server:latest).
#
#   prebuilt (default)  compile the static server here (CGO_ENABLED=0, for
#                       GOARCH, default this machine's) and pack it with
#                       `--target prebuilt` from a build context holding only
#                       the Dockerfile, passwd, group and the binary: nothing
#                       to pull, works with BuildKit and the legacy builder.
#   source              `docker build` from the repository root: compiles in
#                       the golang image (needs a registry). Use BuildKit
#                       (docker buildx), which honours Dockerfile.dockerignore.
#
# Environment: GO (go), GOARCH, VERSION (git describe), DOCKER (docker).
set -euo pipefail
cd "$(dirname "$0")/../.."

mode=${1:-prebuilt}
tag=${2:-wsrc-server:latest}
GO=${GO:-go}
DOCKER=${DOCKER:-docker}
VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}

case $mode in
prebuilt)
    ctx=$(mktemp -d)
    trap 'rm -rf "$ctx"' EXIT
    mkdir -p "$ctx/deploy/container"
    cp deploy/container/Dockerfile deploy/container/passwd deploy/container/group "$ctx/deploy/container/"
    CGO_ENABLED=0 GOOS=linux GOARCH=${GOARCH:-$("$GO" env GOARCH)} "$GO" build -trimpath \
        -ldflags "-s -w -X github.com/wsrc-go/wsrc/internal/version.Version=$VERSION" \
        -o "$ctx/wsrc-server" ./cmd/wsrc-server
    "$DOCKER" build --quiet -f "$ctx/deploy/container/Dockerfile" --target prebuilt \
        --build-arg BINARY=wsrc-server -t "$tag" "$ctx"
    ;;
source)
    "$DOCKER" build -f deploy/container/Dockerfile --build-arg "VERSION=$VERSION" -t "$tag" .
    ;;
*)
    echo "build.sh: unknown mode '$mode' (prebuilt, source)" >&2
    exit 2
    ;;
esac
