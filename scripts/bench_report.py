#!/usr/bin/env python3
"""Regenerates the tables (and the plot) of BENCHMARKS.md from criterion's output.

    cargo bench -p shmrpc-bench --bench rpc --features bench-peers
    python3 scripts/bench_report.py            # rewrites BENCHMARKS.md between the markers
    python3 scripts/bench_report.py --also RUN_DIR...   # plus key ratios of earlier runs
                                               # (copies of target/criterion, oldest first)

Reads target/criterion/<group>/<id>/<param>/new/estimates.json (the median of the samples)
and never types a figure by hand. The plot needs matplotlib (pip install matplotlib).
"""
import json
import os
import platform
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRIT = os.path.join(ROOT, "target", "criterion")
DOC = os.path.join(ROOT, "BENCHMARKS.md")
PLOT = os.path.join(ROOT, "benches", "latency.png")
BEGIN, END = "<!-- tables:begin -->", "<!-- tables:end -->"

SIZES = [64, 1024, 16384, 131072]
CONTENDERS = ["shmrpc", "shmrpc-park", "shmrpc-async", "raw-spin", "raw-futex", "unix-socket",
              "pipe", "iceoryx2", "ipc-channel"]


def median_ns(*parts, crit=None):
    path = os.path.join(crit or CRIT, *parts, "new", "estimates.json")
    try:
        with open(path) as f:
            return json.load(f)["median"]["point_estimate"]
    except FileNotFoundError:
        return None


def fmt_time(ns):
    if ns is None:
        return "–"
    return f"{ns:,.0f} ns" if ns < 10_000 else f"{ns / 1000:,.1f} µs"


def fmt_size(n):
    return f"{n // 1024} KiB" if n >= 1024 else f"{n} B"


def ratio(a, b):
    return "–" if a is None or b is None else f"{a / b:.2f}×"


def machine():
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, Linux {platform.release()}"


def tables():
    rt = {(c, n): median_ns("round_trip", c, str(n)) for c in CONTENDERS for n in SIZES}
    out = [f"Machine: {machine()}.", ""]
    out.append("### Round trip, median per call (request and reply of the size shown)")
    out.append("")
    out.append("| payload | " + " | ".join(CONTENDERS) + " |")
    out.append("|---|" + "---|" * len(CONTENDERS))
    for n in SIZES:
        out.append(f"| {fmt_size(n)} | " + " | ".join(fmt_time(rt[(c, n)]) for c in CONTENDERS) + " |")
    out.append("")
    out.append("### Ratios (same run)")
    out.append("")
    out.append("| payload | shmrpc / raw-spin (target ≤ 2) | shmrpc-park / raw-futex (target ≤ 1.3) "
               "| unix-socket / shmrpc (target ≥ 10 at 64 B, > 1) | iceoryx2 / shmrpc (> 1) "
               "| ipc-channel / shmrpc (> 1) | pipe / shmrpc |")
    out.append("|---|---|---|---|---|---|---|")
    for n in SIZES:
        s = rt[("shmrpc", n)]
        out.append(
            f"| {fmt_size(n)} | {ratio(s, rt[('raw-spin', n)])} "
            f"| {ratio(rt[('shmrpc-park', n)], rt[('raw-futex', n)])} "
            f"| {ratio(rt[('unix-socket', n)], s)} | {ratio(rt[('iceoryx2', n)], s)} "
            f"| {ratio(rt[('ipc-channel', n)], s)} | {ratio(rt[('pipe', n)], s)} |")
    out.append("")
    out.append("### Throughput, 64 B calls, requests per second (median)")
    out.append("")
    cols = ["1t", "2t", "4t", "8t", "2p"]
    out.append("| server | " + " | ".join(
        {"1t": "1 thread", "2t": "2 threads", "4t": "4 threads", "8t": "8 threads",
         "2p": "2 processes"}[c] for c in cols) + " | 8 threads / best |")
    out.append("|---|" + "---|" * (len(cols) + 1))
    for row, elems in [("shmrpc-1w", None), ("shmrpc-2w", None), ("unix-socket", None)]:
        rates = {}
        for c in cols:
            ns = median_ns("throughput_64B", row, c)
            k = 2 if c == "2p" else int(c[:-1])
            rates[c] = None if ns is None else k / (ns * 1e-9)
        vals = [r for r in rates.values() if r]
        best = max(vals) if vals else None
        eight = rates.get("8t")
        label = {"shmrpc-1w": "shmrpc, 1 worker", "shmrpc-2w": "shmrpc, 2 workers",
                 "unix-socket": "Unix socket, thread per connection"}[row]
        out.append(f"| {label} | " + " | ".join(
            "–" if rates[c] is None else f"{rates[c]:,.0f}" for c in cols)
            + f" | {'–' if not (best and eight) else f'{100 * eight / best:.0f} %'} |")
    out.append("")
    out.append("### The cost of safety (per message)")
    out.append("")
    out.append("| archive | bytecheck validation | unchecked access | untrusted mode: copy + checksum |")
    out.append("|---|---|---|---|")
    for label in ["64B", "16KiB"]:
        out.append(f"| {label} | " + " | ".join(fmt_time(median_ns("safety", k, label)) for k in
                                               ["bytecheck-access", "unchecked-access",
                                                "untrusted-copy+checksum"]) + " |")
    return rt, "\n".join(out)


def key_ratios(dirs):
    """One row per run: the ratios the targets are about."""
    out = ["### Key ratios, run by run (each run is one `cargo bench`; the last is the one above)",
           "",
           "| run | shmrpc / raw-spin 64 B | 1 KiB | park / raw-futex 64 B | unix-socket / shmrpc 64 B "
           "| iceoryx2 / shmrpc 64 B | 1 KiB | 16 KiB | 128 KiB | 8 threads / best, 1 worker | 2 workers |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, d in enumerate(dirs, 1):
        m = lambda c, n: median_ns("round_trip", c, str(n), crit=d)
        cells = [ratio(m("shmrpc", 64), m("raw-spin", 64)), ratio(m("shmrpc", 1024), m("raw-spin", 1024)),
                 ratio(m("shmrpc-park", 64), m("raw-futex", 64)), ratio(m("unix-socket", 64), m("shmrpc", 64))]
        cells += [ratio(m("iceoryx2", n), m("shmrpc", n)) for n in SIZES]
        for row in ["shmrpc-1w", "shmrpc-2w"]:
            rates = []
            for c in ["1t", "2t", "4t", "8t", "2p"]:
                ns = median_ns("throughput_64B", row, c, crit=d)
                k = 2 if c == "2p" else int(c[:-1])
                rates.append(None if ns is None else k / (ns * 1e-9))
            vals = [r for r in rates if r]
            cells.append("–" if not vals or rates[3] is None else f"{100 * rates[3] / max(vals):.0f} %")
        out.append(f"| {i} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def plot(rt):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: plot not redrawn", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(8, 5))
    for c in CONTENDERS:
        xs = [n for n in SIZES if rt[(c, n)] is not None]
        if xs:
            ax.plot(xs, [rt[(c, n)] / 1000 for n in xs], marker="o", label=c)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("payload each way (bytes)")
    ax.set_ylabel("round trip, median (µs)")
    ax.set_title("Round trip between two processes (same run)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)
    return True


def main():
    rt, text = tables()
    if "--also" in sys.argv:
        dirs = sys.argv[sys.argv.index("--also") + 1:] + [CRIT]
        text += "\n\n" + key_ratios(dirs)
    doc = open(DOC).read() if os.path.exists(DOC) else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in doc or END not in doc:
        sys.exit(f"{DOC} lacks the markers {BEGIN} / {END}")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    open(DOC, "w").write(f"{head}{BEGIN}\n{text}\n{END}{tail}")
    drawn = plot(rt)
    print(text)
    print(f"\nwrote {DOC}" + (f" and {PLOT}" if drawn else ""))


if __name__ == "__main__":
    main()
