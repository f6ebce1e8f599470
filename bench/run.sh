#!/usr/bin/env bash
# Benchmarks Between against a direct connection, HAProxy, nginx and caddy-l4's
# own `proxy` handler in one run of the shared harness (../shared/bench, see its
# README). One Caddy binary built from this tree plays two --custom targets:
#   caddy-l4  layer4 + caddy-l4's proxy   ../shared/bench/peers/caddy-l4.json  19301-19303
#   between   layer4 + the between handler  bench/between.json                 19501-19502
# and, for the harness's udp test only, two more processes of the same binary
# (separate processes, so that each one's CPU is its own):
#   between-udp       between on a between+udp/ listener  bench/between-udp.json        19503/udp
#   between-stockudp  between on caddy-l4's udp/ listener  bench/between-udp-stock.json  19504/udp
# Both UDP configs use max_responses 1 (nginx's proxy_responses 1) and
# client_idle_timeout 30s. Only the UDP test: bench/run.sh --tests udp
# With BETWEEN_BASELINE=<commit> (default: off) a third one is added: the binary
# built from that commit (in a temporary git worktree, removed afterwards) with
# that commit's own bench/between.json moved to ports 19601-19602, as the target
# between-<shortsha>; e.g. BETWEEN_BASELINE=c152d67, the last standalone build.
# Extra arguments go to the harness (e.g. --quick, --rounds 3, --quiet-wait 30,
# --tests tcp1,close).
#
#   bench/run.sh                                   # ~5 min -> bench/results/<time>/results.md
#   BETWEEN_BASELINE=c152d67 bench/run.sh --quiet-wait 30 --rounds 3
#
# With BETWEEN_ONE_CORE=1 two more targets run the same configs under
# GOMAXPROCS=1 (between-1p on 19511-19512, between-udp-1p on 19513/udp).
# Environment: BETWEEN_BASELINE (commit, off), BETWEEN_ONE_CORE (off), BETWEEN_BENCH_HARNESS (harness
# folder, ../shared/bench), MAX_LIFE (seconds each server may live, 7200 here)
# and the harness's own knobs (ROUNDS, WRK_SECS, ...).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HARNESS=${BETWEEN_BENCH_HARNESS:-$ROOT/../shared/bench}
BASELINE=${BETWEEN_BASELINE:-}
# the harness ends every server after MAX_LIFE s (900 by default); six targets
# with --quiet-wait on a busy machine and 3 rounds can take over an hour
export MAX_LIFE=${MAX_LIFE:-7200}

[[ -x "$HARNESS/run.sh" ]] || { echo "bench/run.sh: no harness at $HARNESS" >&2; exit 1; }
if [[ -n "$BASELINE" ]]; then
	sha=$(git -C "$ROOT" rev-parse --verify --quiet "$BASELINE^{commit}") ||
		{ echo "bench/run.sh: BETWEEN_BASELINE=$BASELINE is not a commit" >&2; exit 1; }
	short=$(git -C "$ROOT" rev-parse --short=7 "$sha")
fi
WORK=$(mktemp -d /tmp/between-bench.XXXXXX)
BASE_TREE=""
cleanup() {
	if [[ -n "$BASE_TREE" ]]; then
		git -C "$ROOT" worktree remove --force "$BASE_TREE" 2>/dev/null || true
		git -C "$ROOT" worktree prune 2>/dev/null || true
	fi
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cp -r "$HARNESS" "$WORK/bench"
chmod -R u+w "$WORK/bench"
rm -rf "$WORK/bench/results" "$WORK/bench/bin"
echo "bench/run.sh: building $ROOT/cmd/caddy" >&2
(cd "$ROOT" && go build -o "$WORK/caddy" ./cmd/caddy)

targets=(
	--custom "name=caddy-l4,tcp=127.0.0.1:19301,iperf=127.0.0.1:19302,udp=127.0.0.1:19303,cmd=$WORK/caddy run --config $WORK/bench/peers/caddy-l4.json"
	--custom "name=between,tcp=127.0.0.1:19501,iperf=127.0.0.1:19502,cmd=$WORK/caddy run --config $ROOT/bench/between.json"
	--custom "name=between-udp,udp=127.0.0.1:19503,cmd=$WORK/caddy run --config $ROOT/bench/between-udp.json"
	--custom "name=between-stockudp,udp=127.0.0.1:19504,cmd=$WORK/caddy run --config $ROOT/bench/between-udp-stock.json"
)

if [[ -n "$BASELINE" ]]; then
	BASE_TREE=$WORK/baseline-$short
	git -C "$ROOT" worktree add --detach --quiet "$BASE_TREE" "$sha"
	echo "bench/run.sh: building baseline $short" >&2
	(cd "$BASE_TREE" && go build -o "$WORK/caddy-$short" ./cmd/caddy)
	# that commit's own config, moved from 19501/19502 to 19601/19602
	sed -e 's/:19501"/:19601"/g' -e 's/:19502"/:19602"/g' "$BASE_TREE/bench/between.json" >"$WORK/between-$short.json"
	grep -q ':19601"' "$WORK/between-$short.json" && grep -q ':19602"' "$WORK/between-$short.json" ||
		{ echo "bench/run.sh: $short's bench/between.json does not listen on :19501 and :19502" >&2; exit 1; }
	"$WORK/caddy-$short" validate --config "$WORK/between-$short.json" >"$WORK/validate.log" 2>&1 || {
		echo "bench/run.sh: $short's bench/between.json does not validate with $short's binary:" >&2
		tail -3 "$WORK/validate.log" >&2
		exit 1
	}
	# the binary and config are copied out of the worktree, so remove it now
	git -C "$ROOT" worktree remove --force "$BASE_TREE"
	BASE_TREE=""
	targets+=(--custom "name=between-$short,tcp=127.0.0.1:19601,iperf=127.0.0.1:19602,cmd=$WORK/caddy-$short run --config $WORK/between-$short.json")
fi

if [[ -n "${BETWEEN_ONE_CORE:-}" ]]; then
	# the same two configs on other ports, run with GOMAXPROCS=1: what one
	# scheduler thread saves in CPU and costs in throughput
	sed -e 's/:19501"/:19511"/g' -e 's/:19502"/:19512"/g' "$ROOT/bench/between.json" >"$WORK/between-1p.json"
	sed -e 's/:19503"/:19513"/g' "$ROOT/bench/between-udp.json" >"$WORK/between-udp-1p.json"
	targets+=(
		--custom "name=between-1p,tcp=127.0.0.1:19511,iperf=127.0.0.1:19512,cmd=env GOMAXPROCS=1 $WORK/caddy run --config $WORK/between-1p.json"
		--custom "name=between-udp-1p,udp=127.0.0.1:19513,cmd=env GOMAXPROCS=1 $WORK/caddy run --config $WORK/between-udp-1p.json"
	)
fi

OUT=$ROOT/bench/results/$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
"$WORK/bench/run.sh" --out "$OUT" direct haproxy nginx "${targets[@]}" "$@"
# the harness gives CPU per GB for 4 streams only; add the 1-stream figure
if grep -q $'\ttcp1\t' "$OUT/raw/manifest.tsv" 2>/dev/null; then
	printf '\n%s\n' "$("$ROOT/bench/tcp1-cpu.sh" "$OUT")" >>"$OUT/results.md"
fi
echo "results: $OUT/results.md"
