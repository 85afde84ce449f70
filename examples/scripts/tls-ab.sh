#!/usr/bin/env bash
# The cost of mutual TLS between nodes: the same release `bench` binary
# without (BASE) and with `--tls` (NEW), in interleaved rounds through
# perf-ab.sh (medians and the ratio NEW/BASE at 64 clients and 1 client).
#
#   examples/scripts/tls-ab.sh [ROUNDS] [SECS] [-- BENCH ARGS]
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
cargo build -q --release --example bench
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp target/release/examples/bench "$work/bench"
printf '#!/bin/sh\nexec "%s/bench" --tls "$@"\n' "$work" > "$work/bench-tls"
chmod +x "$work/bench-tls"
rounds=${1:-5}; secs=${2:-6}
[ $# -gt 0 ] && [ "$1" != -- ] && shift
[ $# -gt 0 ] && [ "$1" != -- ] && shift
examples/scripts/perf-ab.sh "$work/bench" "$work/bench-tls" "$rounds" "$secs" "$@"
