#!/usr/bin/env bash
# A/B write benchmark with cached builds: like ../shared/perf-ab.sh (the
# project's reference instrument: interleaved rounds in ONE run, medians and
# the ratio NEW/BASE), but each commit's release `bench` binary is built once
# and kept in $CATGA_AB_CACHE (default /tmp/catga-ab/<commit>), so comparing
# a change against the same base again costs no rebuild. The working tree
# ("."), if named, is built with the repository's own target dir.
#
#   examples/scripts/perf-ab.sh BASE [NEW] [ROUNDS] [SECS] [-- BENCH ARGS]
#
# BASE or NEW may also be the path of a `bench` binary built already (for
# trying variants of the working tree against each other).
# Extra bench arguments after `--` go to both sides (e.g. `-- --via-follower`).
# The last two lines are the ones to quote in a commit message.
set -euo pipefail
base=${1:?usage: perf-ab.sh BASE [NEW] [ROUNDS] [SECS] [-- BENCH ARGS]}
shift
new=.; rounds=3; secs=6
[ $# -gt 0 ] && [ "$1" != -- ] && { new=$1; shift; }
[ $# -gt 0 ] && [ "$1" != -- ] && { rounds=$1; shift; }
[ $# -gt 0 ] && [ "$1" != -- ] && { secs=$1; shift; }
[ $# -gt 0 ] && [ "$1" = -- ] && shift
extra=("$@")
root=$(git rev-parse --show-toplevel)
cache=${CATGA_AB_CACHE:-/tmp/catga-ab}
mkdir -p "$cache"

build() { # $1 = commit, ".", or the path of a bench binary built already
  if [ -x "$1" ] && [ -f "$1" ]; then echo "$1"; return; fi
  if [ "$1" = "." ]; then
    (cd "$root" && cargo build -q --release --example bench) >&2
    mkdir -p "$cache/worktree"; cp "$root/target/release/examples/bench" "$cache/worktree/bench"
    echo "$cache/worktree/bench"; return
  fi
  local sha; sha=$(git -C "$root" rev-parse --short=12 "$1^{commit}")
  if [ ! -x "$cache/$sha/bench" ]; then
    local wt="$cache/src-$sha"
    rm -rf "$wt"; git -C "$root" worktree add -f -q --detach "$wt" "$sha"
    (cd "$wt" && CARGO_TARGET_DIR="$cache/target" cargo build -q --release --example bench) >&2
    mkdir -p "$cache/$sha"; cp "$cache/target/release/examples/bench" "$cache/$sha/bench"
    git -C "$root" worktree remove --force "$wt" >/dev/null 2>&1 || true
  fi
  echo "$cache/$sha/bench"
}
echo "building BASE=$base and NEW=$new (release) ..." >&2
A=$(build "$base")
B=$(build "$new")

field() { sed -n "s/.*$1=\([0-9]*\).*/\1/p"; }
declare -a a64 b64 a1 b1 a99 b99
for r in $(seq "$rounds"); do
  for side in A B; do
    bin=$A; [ $side = B ] && bin=$B
    l64=$("$bin" --clients 64 --seconds "$secs" "${extra[@]}" 2>/dev/null | grep '^bench:' | tail -1)
    l1=$("$bin" --clients 1 --seconds "$secs" "${extra[@]}" 2>/dev/null | grep '^bench:' | tail -1)
    echo "$side r$r 64: $l64"
    echo "$side r$r 1:  $l1"
    w=$(echo "$l64" | field writes_per_s); q=$(echo "$l64" | field write_p99_us); p=$(echo "$l1" | field write_p50_us)
    if [ $side = A ]; then a64+=("$w"); a99+=("$q"); a1+=("$p"); else b64+=("$w"); b99+=("$q"); b1+=("$p"); fi
  done
done
med() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
ma=$(med "${a64[@]}"); mb=$(med "${b64[@]}"); pa=$(med "${a1[@]}"); pb=$(med "${b1[@]}")
qa=$(med "${a99[@]}"); qb=$(med "${b99[@]}")
echo "median p99 (us) at 64 clients:  BASE $qa  NEW $qb  ratio NEW/BASE $(echo "scale=2; $qb / $qa" | bc)"
echo "median writes/s at 64 clients: BASE $ma  NEW $mb  ratio NEW/BASE $(echo "scale=2; $mb / $ma" | bc)"
echo "median 1-client p50 (us):      BASE $pa  NEW $pb  ratio NEW/BASE $(echo "scale=2; $pb / $pa" | bc)"
