#!/usr/bin/env bash
# Builds Jaeger v2 for the tests that check pulsetrace's traces in a real
# Jaeger (tests/e2e/test_jaeger.py): the cmd/jaeger program of the Go module
# github.com/jaegertracing/jaeger, at the version pinned in go.mod and go.sum
# beside this script (a `tool` directive), from the Go module proxy.
#
# The binary goes to $XDG_CACHE_HOME/pulsetrace/bin/jaeger-<version>
# (~/.cache/... by default), outside the repository. When it is there already
# nothing is done, so running this again costs nothing. Prints the binary's
# path on success.
#
#   scripts/peers/jaeger/build.sh          build when missing
#   scripts/peers/jaeger/build.sh --path   only print where the binary goes
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
package=github.com/jaegertracing/jaeger/cmd/jaeger
version=$(awk '$1 == "github.com/jaegertracing/jaeger" { print $2 }' "$here/go.mod")
if [ -z "$version" ]; then
  echo "error: $here/go.mod does not require github.com/jaegertracing/jaeger" >&2
  exit 1
fi
bin_dir=${XDG_CACHE_HOME:-$HOME/.cache}/pulsetrace/bin
bin=$bin_dir/jaeger-$version

if [ "${1:-}" = "--path" ]; then
  echo "$bin"
  exit 0
fi
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi

# The go.dev install puts go in /usr/local/go/bin, which a non-login shell
# (CI's) may not have on PATH.
if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
  PATH=/usr/local/go/bin:$PATH
fi
if ! command -v go >/dev/null; then
  cat >&2 <<EOF
error: building Jaeger $version (for tests/e2e/test_jaeger.py) needs the Go
toolchain, and 'go' is not on PATH. Install Go 1.24 or later (from go.dev,
or Debian's golang-go when it is that recent) and let it reach the Go module
proxy; then run 'make jaeger' again.
EOF
  exit 1
fi

mkdir -p "$bin_dir"
# One build at a time (make may start it while another one runs): the
# second waits for the first, then finds the binary there.
exec 9>"$bin.lock"
flock 9
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi

echo "building Jaeger $version into $bin (a few minutes on a fresh machine)" >&2
tmp=$(mktemp "$bin.XXXXXX")
trap 'rm -f "$tmp"' EXIT
started=$SECONDS
# -mod=readonly: go.mod and go.sum are used as committed, never rewritten.
# Go's output (a line per module downloaded) is shown only when it fails.
log=$(mktemp)
trap 'rm -f "$tmp" "$log"' EXIT
if ! (cd "$here" && go build -mod=readonly -o "$tmp" "$package") 2>"$log"; then
  cat "$log" >&2
  echo "error: building Jaeger $version failed (go build $package in $here)" >&2
  exit 1
fi
chmod 755 "$tmp"
mv "$tmp" "$bin"
echo "built Jaeger $version in $((SECONDS - started)) s" >&2
echo "$bin"
