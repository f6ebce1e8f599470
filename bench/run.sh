#!/usr/bin/env bash
# Benchmarks Between against a direct connection, HAProxy and nginx in one run,
# with the shared harness (../shared/bench, see its README): Between is plugged
# in as a --custom target with bench/between.json. Extra arguments go to the
# harness (e.g. --quick, --rounds 3, --tests tcp1,close).
#
#   bench/run.sh            # ~3 min -> bench/results/<time>/results.md
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HARNESS=${BETWEEN_BENCH_HARNESS:-$ROOT/../shared/bench}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cp -r "$HARNESS" "$WORK/bench"
chmod -R u+w "$WORK/bench"
(cd "$ROOT" && go build -o "$WORK/caddy" ./cmd/caddy)
OUT=$ROOT/bench/results/$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
"$WORK/bench/run.sh" --out "$OUT" direct haproxy nginx "$@" \
	--custom "name=between,tcp=127.0.0.1:19501,iperf=127.0.0.1:19502,cmd=$WORK/caddy run --config $ROOT/bench/between.json"
echo "results: $OUT/results.md"
