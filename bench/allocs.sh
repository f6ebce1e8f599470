#!/usr/bin/env bash
# Splits the heap allocations of one TCP connection through caddy-l4 + Between
# by owner (caddy-l4, Between, Go's net package, the test's own client and
# backend), from l4handler/bench_test.go: two exact memory profiles
# (-memprofilerate 1) of N1 and N2 connections, the first subtracted from the
# second so that Caddy's start-up cancels out, divided by N2-N1.
#
#   bench/allocs.sh                               # ConnBetween/listen=between+tcp, ~1 min
#   bench/allocs.sh 'ConnL4Proxy/listen=tcp$'     # any benchmark of l4handler/bench_test.go
#
# Environment: N1=10000 N2=20000.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=${1:-'ConnBetween/listen=between\+tcp$'}
N1=${N1:-10000}
N2=${N2:-20000}
W=$(mktemp -d /tmp/between-allocs.XXXXXX)
trap 'rm -rf "$W"' EXIT

(cd "$ROOT" && go test -c -o "$W/l4handler.test" ./l4handler/)
for n in "$N1" "$N2"; do
	"$W/l4handler.test" -test.run xxx -test.bench "$BENCH" -test.benchmem -test.benchtime "${n}x" \
		-test.memprofile "$W/mem$n.out" -test.memprofilerate 1 | grep '^Benchmark' || true
	go tool pprof -sample_index=alloc_objects -traces "$W/l4handler.test" "$W/mem$n.out" 2>/dev/null >"$W/traces$n.txt"
done

# classify every allocation stack by the frames it passes through
classify='
function has(s) { return index(stack, s) > 0 }
function owner() {
	if (has("l4handler.oneConn")) return "test client: net.Dial"
	if (has("l4handler.oneByteBackend") || has("l4handler.BenchmarkConnBare")) return "test backend: accept + answer"
	if (has("tcpproxy.") && !has("net.(*Dialer)")) return "Between: tcpproxy.Proxy (session, channel, copy goroutine)"
	if (has("l4handler.(*Handler).Handle")) {
		if (has("net.(*Dialer).DialContext") && has("resolveAddrList")) return "Between: dial to the backend, Go net: address resolution"
		if (has("net.(*Dialer).DialContext")) return "Between: dial to the backend, Go net: socket, TCPConn, addrs"
		if (has("backend.(*Backend).Address")) return "Between: backend.Address() (JoinHostPort per call)"
		return "Between: Handle itself (Client, OnTx/OnRx closures)"
	}
	if (has("l4proxy.")) return "caddy-l4: proxy handler (incl. its dial)"
	if (has("layer4.(*Server).handle")) {
		if (has("layer4.WrapConnection")) return "caddy-l4: WrapConnection (replacer, vars, contexts)"
		if (has("RouteList.Compile") || has("wrapHandler")) return "caddy-l4: route handler chain built per connection"
		if (has("String")) return "caddy-l4: debug-log fields built eagerly (address strings)"
		return "caddy-l4: handle, other (buffer pool, log entries, close)"
	}
	if (has("net.(*TCPListener).Accept")) return "Go net: accept (fd, TCPConn, addrs)"
	if (has("listeners.")) return "Between: between+tcp dispatch"
	if (has("layer4.(*Server).serve")) return "caddy-l4: serve loop (go s.handle, error var)"
	return "other (runtime, testing)"
}
function flush(o) { if (n != "") { o = owner(); tot[w, o] += n; owners[o] = 1 }; n = ""; stack = "" }
FNR == 1 { flush() }
/^-----------\+/ { flush(); next }
/^ *bytes:/ { next }
n == "" && /^ +[0-9]+ +[^ ]/ { n = $1; stack = $2; w = (FILENAME == f2 ? 2 : 1); next }
n != "" { stack = stack " < " $1 }
END {
	flush()
	for (o in owners) { d = (tot[2, o] - tot[1, o]) / (n2 - n1); if (d >= 0.05 || d <= -0.05) { printf "%7.2f  %s\n", d, o; all += d } }
	printf "%7.2f  total per connection (heap profile)\n", all
}'
echo "allocations per connection, $BENCH ($((N2 - N1)) connections):"
awk -v f2="$W/traces$N2.txt" -v n1="$N1" -v n2="$N2" "$classify" "$W/traces$N1.txt" "$W/traces$N2.txt" | sort -k1,1nr |
	awk '/total per connection/ { t = $0; next } { print } END { print t }'
