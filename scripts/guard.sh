#!/usr/bin/env bash
# The call path's quick guard (seconds once built): the 64 B and 1 KiB round trips against the
# raw limits (`raw-spin`; `raw-inplace`, the limit from 1 KiB on) in a short interleaved run,
# and the instructions of one 64 B round trip (client and worker, park mode) under callgrind.
# Run it before and after any change to the call path; CI runs it in report-only mode.
# Usage: bash scripts/guard.sh   (ROUNDS=5 by default; needs valgrind for the second figure)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-5}"

cargo build --release -q -p shmrpc-bench --example instructions
cargo bench -q -p shmrpc-bench --bench rpc --no-run 2>/dev/null

echo "== 64 B and 1 KiB round trips, interleaved, $ROUNDS rounds"
SHMRPC_BENCH_INTERLEAVED="$ROUNDS" SHMRPC_BENCH_SIZES=64,1024 \
    cargo bench -q -p shmrpc-bench --bench rpc 2>/dev/null \
    | grep -E '^payload|^  (shmrpc |raw-spin |raw-inplace |shmrpc / raw-)'

echo "== instructions per 64 B round trip, client and worker, park mode (callgrind)"
if ! command -v valgrind >/dev/null; then
    echo "skipped: valgrind is not installed"
    exit 0
fi
EXE=target/release/examples/instructions
count() {
    (valgrind --tool=callgrind --callgrind-out-file=/dev/null "$EXE" "$1" 2>&1 || true) \
        | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
# Three pairs of runs, each pair's difference per call; the median is the figure. Both sides
# park instead of spinning (benches/examples/instructions.rs), so the pairs agree within a few
# per cent on one machine; compare figures from the same machine only.
PER=()
for _ in 1 2 3 4 5; do
    A=$(count 2000)
    B=$(count 12000)
    if [ -n "$A" ] && [ -n "$B" ] && [ "$B" -gt "$A" ]; then
        PER+=($(( (B - A) / 10000 )))
    fi
    [ "${#PER[@]}" -lt 3 ] || break
done
if [ "${#PER[@]}" -lt 3 ]; then
    echo "  could not count: ${#PER[@]} good pairs of runs of $EXE under callgrind"
    exit 1
fi
SORTED=($(printf '%s\n' "${PER[@]}" | sort -n))
echo "  ${SORTED[1]} instructions per round trip, median of three (all: ${PER[*]})"
