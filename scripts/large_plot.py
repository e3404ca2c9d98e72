#!/usr/bin/env python3
"""Plots the large-message comparison (benches/large.png) from the per-round times that
`SHMRPC_BENCH_LARGE=ROUNDS cargo bench -p shmrpc-bench --bench rpc --features bench-peers`
writes to target/bench-large.csv: each contender's median time per call against the payload
size, and, below, each contender's time over raw-spin's within each round (median of rounds).

    python3 scripts/large_plot.py [CSV...]  # needs matplotlib (pip install matplotlib)

Several CSVs (several runs) pool their rounds.
"""
import csv
import os
import statistics
import sys
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRCS = sys.argv[1:] or [os.path.join(ROOT, "target", "bench-large.csv")]
OUT = os.path.join(ROOT, "benches", "large.png")


def size_label(n):
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"


def main():
    times = defaultdict(dict)  # (size, contender) -> {(run, round): ns}
    for run, src in enumerate(SRCS):
        with open(src) as f:
            for row in csv.DictReader(f):
                key = (int(row["size"]), row["contender"])
                times[key][(run, int(row["round"]))] = float(row["ns"])
    sizes = sorted({s for s, _ in times})
    contenders = list(dict.fromkeys(c for _, c in times))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 8), sharex=True)
    for c in contenders:
        xs = [s for s in sizes if (s, c) in times]
        top.plot(xs, [statistics.median(times[(s, c)].values()) / 1e6 for s in xs],
                 marker="o", label=c)
        ratios = []
        for s in xs:
            raw = times.get((s, "raw-spin"), {})
            per_round = [ns / raw[r] for r, ns in times[(s, c)].items() if r in raw]
            ratios.append(statistics.median(per_round) if per_round else float("nan"))
        bottom.plot(xs, ratios, marker="o", label=c)
    top.set_xscale("log", base=2)
    top.set_yscale("log")
    top.set_ylabel("round trip, median per call (ms)")
    top.set_title("Large messages: the same bytes each way (lower is better)")
    top.legend()
    top.grid(True, which="both", alpha=0.3)
    bottom.axhline(1.0, color="grey", linewidth=0.8)
    bottom.set_ylabel("time / raw-spin's, same round (median)")
    bottom.set_xticks(sizes, [size_label(s) for s in sizes])
    bottom.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(OUT, dpi=100)
    print(f"wrote {OUT} from {', '.join(SRCS)}")


if __name__ == "__main__":
    main()
