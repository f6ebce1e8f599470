#!/usr/bin/env bash
# The whole test suite: installs what it needs (Debian packages for the real
# peers the tests talk to, staticcheck), then checks formatting, vet,
# staticcheck, and runs every test with the race detector.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real components the tests use. Installed only when missing.
export PATH="$PATH:/usr/sbin:/sbin"
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v dnsmasq >/dev/null || need+=(dnsmasq)
command -v dig >/dev/null || need+=(bind9-dnsutils)
command -v openssl >/dev/null || need+=(openssl)
command -v iperf3 >/dev/null || need+=(iperf3)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
	echo "== installing ${need[*]}"
	if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
	$SUDO apt-get update -q
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
fi

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go'))
if [ -n "$unformatted" ]; then
	echo "gofmt would change: $unformatted"
	exit 1
fi

echo "== go vet"
go vet ./...

echo "== staticcheck"
go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

echo "== go test -race"
go test -race -count=1 -timeout 40m ./...
