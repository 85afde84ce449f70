#!/usr/bin/env bash
# A/B of the HTTP door: two builds' `http_service`, each run as three node
# processes and loaded by the same generator (`examples/http_bench`, built
# once from this working tree), in interleaved rounds in ONE run; beside
# each, the in-process figure of the same build (`examples/bench`), so the
# ratio HTTP / in-process shows what the door costs. Like perf-ab.sh, each
# commit's binaries are built once and kept in $CATGA_AB_CACHE (default
# /tmp/catga-ab/<commit>/{http_service,bench}).
#
#   examples/scripts/http-ab.sh BASE [NEW] [ROUNDS] [SECS] [-- HTTP_BENCH ARGS]
#
# BASE or NEW: a commit, "." (this working tree, built with its own target
# dir), or a directory holding an `http_service` and a `bench` built
# already (variants of the working tree). Extra arguments after `--` go to
# http_bench on both sides (e.g. `-- --tls`). HTTP_AB_INPROC=0 skips the
# in-process runs; HTTP_AB_GEN=PATH uses that http_bench binary instead of
# building one.
#
# Per round and side: `http_bench --connections 64,1` (64 keep-alive
# connections POSTing /restock to the leader, then 1), then
# `bench --clients 64` and `bench --clients 1`. The generator runs on one
# thread but shares the 2 cores with the three nodes: cpu_us_per_write (the
# nodes' and the generator's CPU over the writes) is the figure a loaded
# machine disturbs least. The last two lines are the ones to quote in a
# commit message.
set -euo pipefail
base=${1:?usage: http-ab.sh BASE [NEW] [ROUNDS] [SECS] [-- HTTP_BENCH ARGS]}
shift
new=.; rounds=3; secs=6
[ $# -gt 0 ] && [ "$1" != -- ] && { new=$1; shift; }
[ $# -gt 0 ] && [ "$1" != -- ] && { rounds=$1; shift; }
[ $# -gt 0 ] && [ "$1" != -- ] && { secs=$1; shift; }
[ $# -gt 0 ] && [ "$1" = -- ] && shift
extra=("$@")
inproc=${HTTP_AB_INPROC:-1}
root=$(git rev-parse --show-toplevel)
cache=${CATGA_AB_CACHE:-/tmp/catga-ab}
mkdir -p "$cache"

build() { # $1 = commit, ".", or a directory with http_service and bench; prints the directory
  if [ -d "$1" ] && [ -x "$1/http_service" ]; then echo "$1"; return; fi
  if [ "$1" = "." ]; then
    (cd "$root" && cargo build -q --release --example http_service --example bench --example http_bench) >&2
    local out="$cache/wt-$(basename "$root")"
    mkdir -p "$out"
    cp "$root/target/release/examples/http_service" "$root/target/release/examples/bench" "$out/"
    echo "$out"; return
  fi
  local sha; sha=$(git -C "$root" rev-parse --short=12 "$1^{commit}")
  if [ ! -x "$cache/$sha/http_service" ] || [ ! -x "$cache/$sha/bench" ]; then
    local wt="$cache/src-$sha"
    rm -rf "$wt"; git -C "$root" worktree add -f -q --detach "$wt" "$sha"
    (cd "$wt" && CARGO_TARGET_DIR="$cache/target" cargo build -q --release --example http_service --example bench) >&2
    mkdir -p "$cache/$sha"
    cp "$cache/target/release/examples/http_service" "$cache/target/release/examples/bench" "$cache/$sha/"
    git -C "$root" worktree remove --force "$wt" >/dev/null 2>&1 || true
  fi
  echo "$cache/$sha"
}
echo "building BASE=$base and NEW=$new and the generator (release) ..." >&2
A=$(build "$base")
B=$(build "$new")
gen=$(mktemp -d)
trap 'rm -rf "$gen"' EXIT
if [ -n "${HTTP_AB_GEN:-}" ]; then
  cp "$HTTP_AB_GEN" "$gen/http_bench"
else
  (cd "$root" && cargo build -q --release --example http_bench) >&2
  cp "$root/target/release/examples/http_bench" "$gen/http_bench"
fi
echo "uptime at start: $(uptime)"

field() { sed -n "s/.*[ :]$1=\([0-9.?]*\).*/\1/p"; }
declare -a aw bw a99 b99 a1 b1 acpu bcpu aiw biw ai99 bi99 ai1 bi1 aicpu bicpu
for r in $(seq "$rounds"); do
  for side in A B; do
    dir=$A; [ $side = B ] && dir=$B
    out=$("$gen/http_bench" --service "$dir/http_service" --connections 64,1 --seconds "$secs" "${extra[@]}" 2>/dev/null || true)
    h64=$(echo "$out" | grep '^http: connections=64 ' | tail -1)
    h1=$(echo "$out" | grep '^http: connections=1 ' | tail -1)
    [ -n "$h64" ] && [ -n "$h1" ] || { echo "$side r$r: http_bench failed: $out" >&2; exit 1; }
    echo "$side r$r http 64: $h64"
    echo "$side r$r http 1:  $h1"
    w=$(echo "$h64" | field writes_per_s); q=$(echo "$h64" | field p99_us)
    p=$(echo "$h1" | field p50_us); c=$(echo "$h64" | field cpu_us_per_write)
    if [ "$inproc" != 0 ]; then
      l64=$("$dir/bench" --clients 64 --seconds "$secs" 2>/dev/null | grep '^bench:' | tail -1)
      l1=$("$dir/bench" --clients 1 --seconds "$secs" 2>/dev/null | grep '^bench:' | tail -1)
      echo "$side r$r in-process 64: $l64"
      echo "$side r$r in-process 1:  $l1"
      iw=$(echo "$l64" | field writes_per_s); iq=$(echo "$l64" | field write_p99_us)
      ip=$(echo "$l1" | field write_p50_us); ic=$(echo "$l64" | field cpu_us_per_write)
    else
      iw=1; iq=1; ip=1; ic=1
    fi
    if [ $side = A ]; then
      aw+=("$w"); a99+=("$q"); a1+=("$p"); acpu+=("$c"); aiw+=("$iw"); ai99+=("$iq"); ai1+=("$ip"); aicpu+=("$ic")
    else
      bw+=("$w"); b99+=("$q"); b1+=("$p"); bcpu+=("$c"); biw+=("$iw"); bi99+=("$iq"); bi1+=("$ip"); bicpu+=("$ic")
    fi
  done
done
echo "uptime at end: $(uptime)"
med() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
ratio() { echo "scale=2; $1 / $2" | bc; }
mw=$(med "${aw[@]}"); nw=$(med "${bw[@]}"); m99=$(med "${a99[@]}"); n99=$(med "${b99[@]}")
m1=$(med "${a1[@]}"); n1=$(med "${b1[@]}"); mc=$(med "${acpu[@]}"); nc=$(med "${bcpu[@]}")
if [ "$inproc" != 0 ]; then
  miw=$(med "${aiw[@]}"); niw=$(med "${biw[@]}"); mi99=$(med "${ai99[@]}"); ni99=$(med "${bi99[@]}")
  mi1=$(med "${ai1[@]}"); ni1=$(med "${bi1[@]}"); mic=$(med "${aicpu[@]}"); nic=$(med "${bicpu[@]}")
  echo "in-process medians: BASE ${miw} w/s, p99 ${mi99} us, p50(1) ${mi1} us, ${mic} cpu-us/w;  NEW ${niw} w/s, p99 ${ni99} us, p50(1) ${ni1} us, ${nic} cpu-us/w"
  echo "HTTP/in-process writes/s at 64: BASE $(ratio "$mw" "$miw")  NEW $(ratio "$nw" "$niw")"
fi
echo "HTTP p99 at 64 (us): BASE $m99  NEW $n99  ratio $(ratio "$n99" "$m99");  HTTP cpu-us per write at 64: BASE $mc  NEW $nc  ratio $(ratio "$nc" "$mc")"
echo "HTTP writes/s at 64: BASE $mw  NEW $nw  ratio NEW/BASE $(ratio "$nw" "$mw");  HTTP 1-conn p50 (us): BASE $m1  NEW $n1  ratio $(ratio "$n1" "$m1")"
