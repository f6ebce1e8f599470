#!/usr/bin/env bash
# Runs every fuzz target of the module for $FUZZTIME (default 30s) each,
# $JOBS at a time. Targets are found with `go test -list`, so a new Fuzz
# function is picked up without editing this script. The first crash stops
# the run: go test writes the crashing input under the package's
# testdata/fuzz/FuzzName/, and this script prints that path. Fix the bug and
# keep the file: it is then a regression seed that every `go test` runs.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZTIME=${FUZZTIME:-30s}

# Only packages whose tests hold a Fuzz function are listed with go test
# (listing runs the test binary, and e2e's TestMain builds Caddy).
pkgs=()
while read -r dir pkg; do
	if grep -qs '^func Fuzz' "$dir"/*_test.go; then
		pkgs+=("$pkg")
	fi
done < <(go list -f '{{.Dir}} {{.ImportPath}}' ./...)

# fuzz_one runs one target and reports a crash with its input file.
fuzz_one() {
	local pkg=$1 name=$2 dir log crasher
	dir=$(go list -f '{{.Dir}}' "$pkg")
	log=$(mktemp)
	run() { go test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" -parallel "$PARALLEL" "$pkg" >"$log" 2>&1; }
	# Go's fuzzing engine can end a run with "context deadline exceeded"
	# and no failing input when the machine is too busy for its workers
	# to report in time: that is no crash, run the target once more.
	if ! run && ! { ! grep -q 'Failing input written' "$log" && grep -q 'context deadline exceeded' "$log" && echo "   ($name: fuzzing engine timed out without a crash; once more)" && run; }; then
		cat "$log"
		crasher=$(sed -n 's/.*Failing input written to \(testdata\/fuzz\/[^ ]*\).*/\1/p' "$log" | tail -n 1)
		rm -f "$log"
		if [ -n "$crasher" ]; then
			echo "FAIL: $pkg $name crashed; input: $dir/$crasher"
			echo "reproduce: go test -run '^${name}\$/$(basename "$crasher")\$' $pkg"
		else
			echo "FAIL: $pkg $name"
		fi
		return 1
	fi
	echo "== $pkg $name ($FUZZTIME): ok"
	rm -f "$log"
}

# Targets run $JOBS at a time (default: one per two CPUs, at least 2), each
# with $PARALLEL fuzzing workers, so that the run takes about
# targets x FUZZTIME / JOBS.
cpus=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)
JOBS=${JOBS:-$(( cpus / 2 > 2 ? cpus / 2 : 2 ))}
PARALLEL=${PARALLEL:-$(( cpus / JOBS > 1 ? cpus / JOBS : 1 ))}

start=$SECONDS
count=0
failed=0
running=0
for pkg in "${pkgs[@]}"; do
	for name in $(go test -list '^Fuzz' "$pkg" | grep '^Fuzz'); do
		if [ "$running" -ge "$JOBS" ]; then
			wait -n || failed=$((failed + 1))
			running=$((running - 1))
		fi
		fuzz_one "$pkg" "$name" &
		running=$((running + 1))
		count=$((count + 1))
	done
done
while [ "$running" -gt 0 ]; do
	wait -n || failed=$((failed + 1))
	running=$((running - 1))
done
if [ "$failed" -gt 0 ]; then
	echo "FAIL: $failed of $count fuzz targets"
	exit 1
fi
echo "== $count fuzz targets, $FUZZTIME each, $JOBS at a time, passed in $((SECONDS - start))s"
