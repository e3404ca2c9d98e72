#!/usr/bin/env bash
# Before and after a change to the call path: the small-call interleaved comparison of an older
# commit's build and the working tree's, alternating (old, new, old, new, ...), nothing else
# should run meanwhile. BENCHMARKS.md quotes its output.
# Usage: bash scripts/compare.sh OLD_COMMIT [RUNS=3] [SIZES=64,1024]
set -euo pipefail
cd "$(dirname "$0")/.."
OLD="${1:?usage: scripts/compare.sh OLD_COMMIT [RUNS] [SIZES]}"
RUNS="${2:-3}"
SIZES="${3:-64,1024}"
WT="target/compare/$(git rev-parse --short "$OLD")"
[ -d "$WT" ] || git worktree add --detach "$WT" "$OLD" >/dev/null
bench() {
    (cd "$1" && CARGO_TARGET_DIR="$2" SHMRPC_BENCH_INTERLEAVED=11 SHMRPC_BENCH_SIZES="$SIZES" \
        cargo bench -q -p shmrpc-bench --bench rpc 2>/dev/null \
        | grep -E '^  (shmrpc |raw-spin |shmrpc / raw-spin)|B:')
}
for _ in $(seq 1 "$RUNS"); do
    echo "=== old ($OLD)"
    bench "$WT" "$PWD/target/compare/target"
    echo "=== new (working tree)"
    bench . "$PWD/target"
done
