#!/usr/bin/env bash
# Provide the Consul agent the consul discovery tests run against: build it
# from the Go module proxy once and cache it; print its path.
#
#   scripts/consul.sh [SHARED_DIR]
#
# SHARED_DIR is the steering checkout's shared/ directory (default: ../shared
# beside this repository); its tools/build-consul.sh does the build. The binary
# lands in ${XDG_CACHE_HOME:-$HOME/.cache}/between/consul-$CONSUL_VERSION/consul,
# where the tests look for it (BETWEEN_CONSUL=/path overrides both).
set -euo pipefail
VER=${CONSUL_VERSION:-v1.22.0}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${1:-$ROOT/../shared}
BIN=${BETWEEN_CONSUL:-${XDG_CACHE_HOME:-$HOME/.cache}/between/consul-$VER/consul}
if [ -x "$BIN" ] && "$BIN" version >/dev/null 2>&1; then
	echo "$BIN"
	exit 0
fi
BUILD=$SHARED/tools/build-consul.sh
if [ ! -f "$BUILD" ]; then
	echo "consul.sh: $BUILD not found (pass the shared/ directory as the first argument)" >&2
	exit 1
fi
mkdir -p "$(dirname "$BIN")"
# build beside the target and move it in, so an interrupted build leaves no
# half-written binary at the cached path
TMP=$BIN.tmp.$$
trap 'rm -f "$TMP"' EXIT
CONSUL_VERSION=$VER bash "$BUILD" "$TMP" >&2
mv "$TMP" "$BIN"
echo "$BIN"
