#!/usr/bin/env bash
# Runs every check and test of the project. On a fresh Debian machine it is
# all the setup needed: it installs Debian's chromium (for the browser
# tests) when it is missing.
#
#   bash scripts/test.sh              # checks, go test -race ./..., short fuzzing
#   FUZZTIME=10m bash scripts/test.sh # fuzz each target for 10 minutes
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null; then
	echo "== installing chromium (Debian package)"
	sudo=""
	[ "$(id -u)" = 0 ] || sudo="sudo"
	export DEBIAN_FRONTEND=noninteractive
	$sudo apt-get update -qq
	$sudo apt-get install -y -qq chromium >/dev/null
fi

echo "== gofmt"
bad=$(gofmt -l .)
if [ -n "$bad" ]; then
	echo "not gofmt'ed: $bad" >&2
	exit 1
fi
echo "== go vet"
go vet ./...
echo "== staticcheck"
go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

echo "== fuzzing (${FUZZTIME:=10s} per target)"
for target in ./frame:FuzzParseHeader ./upgrade:FuzzValidateRequest ./tunnel:FuzzRelay; do
	pkg=${target%%:*} fn=${target##*:}
	go test -run '^$' -fuzz "^${fn}\$" -fuzztime "$FUZZTIME" "$pkg"
done

echo "== go test -race"
go test -race -count=1 -timeout 15m ./...
