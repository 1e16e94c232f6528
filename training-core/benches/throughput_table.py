"""Merges the JSON lines of `throughput` bench runs (tch, flex, ndarray, PyTorch) into Markdown tables.

    python3 throughput_table.py throughput-tch.txt throughput-flex.txt > tables.md

Each input is the captured output of one `cargo bench --bench throughput` run; only lines that
are JSON objects with a `bench` field count, everything else is ignored. Ratios are taken between
numbers of the same file set, so they only mean something when all runs came from one machine,
one after the other, with nothing else running. A point measured in several rounds shows its
median with the lowest and highest value beside it, `[min, max]`; ratios here are ratios of medians (the
bench's own tables pair each round with itself instead). Standard library only.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import OrderedDict


def read_lines(paths: list[str]) -> list[dict]:
    lines = []
    for path in paths:
        with open(path, encoding="utf-8") as file:
            for text in file:
                text = text.strip()
                if not text.startswith("{"):
                    continue
                try:
                    value = json.loads(text)
                except json.JSONDecodeError:
                    continue
                if isinstance(value, dict) and "bench" in value:
                    lines.append(value)
    return lines


def fmt_rate(value: float | None, spread: list[float] | None = None) -> str:
    if value is None:
        return "–"
    if spread and len(spread) > 1:
        return f"{value:.2f} [{min(spread):.2f}, {max(spread):.2f}]"
    return f"{value:.2f}"


def fmt_ratio(a: float | None, b: float | None) -> str:
    return "–" if a is None or b is None else f"{a / b:.2f}×"


def fmt_overhead(plain: float | None, filtered: float | None) -> str:
    if plain is None or filtered is None:
        return "–"
    return f"{(plain / filtered - 1.0) * 100.0:+.1f} %"


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    lines = read_lines(paths)
    machines = OrderedDict()
    rates: dict[tuple[str, int, int, str], list[float]] = {}
    backends: OrderedDict[str, None] = OrderedDict()
    for line in lines:
        if line["bench"] == "machine":
            machines[line["machine"]] = line.get("load_average_1m")
        elif line["bench"] == "throughput":
            key = (line["impl"], line["threads"], line["batch"], line["grokfast"])
            rates.setdefault(key, []).append(line["steps_per_sec"])
            backends[line.get("backend", line["impl"])] = None
    if not rates:
        print("no throughput lines found", file=sys.stderr)
        return 1

    for machine, load in machines.items():
        print(f"Machine: {machine} (load average at start {load}).")
    for backend in backends:
        print(f"- {backend}")
    print()

    impls = [i for i in ("tch", "flex", "ndarray") if any(k[0] == i for k in rates)]
    sizes = sorted({(k[1], k[2]) for k in rates})

    def rate(impl: str, threads: int, batch: int, filt: str) -> float | None:
        values = rates.get((impl, threads, batch, filt))
        return statistics.median(values) if values else None

    def shown(impl: str, threads: int, batch: int, filt: str) -> str:
        return fmt_rate(rate(impl, threads, batch, filt), rates.get((impl, threads, batch, filt)))

    print("### Step throughput (steps/s, no filter)")
    print()
    header = "| threads | batch | PyTorch eager |"
    rule = "|--:|--:|--:|"
    for impl in impls:
        header += f" {impl} | {impl} ÷ PyTorch |"
        rule += "--:|--:|"
    print(header)
    print(rule)
    for threads, batch in sizes:
        torch = rate("pytorch", threads, batch, "none")
        row = f"| {threads} | {batch} | {shown('pytorch', threads, batch, 'none')} |"
        for impl in impls:
            ours = rate(impl, threads, batch, "none")
            row += f" {shown(impl, threads, batch, 'none')} | {fmt_ratio(ours, torch)} |"
        print(row)

    print()
    print("### GrokFast overhead per step")
    print()
    print("| backend | threads | batch | none | EMA | MA | EMA overhead | MA overhead |")
    print("|:--|--:|--:|--:|--:|--:|--:|--:|")
    for impl in impls + ["pytorch"]:
        for threads, batch in sizes:
            none, ema, ma = (rate(impl, threads, batch, f) for f in ("none", "ema", "ma"))
            if ema is None and ma is None:
                continue
            print(
                f"| {impl} | {threads} | {batch} | {shown(impl, threads, batch, 'none')} "
                f"| {shown(impl, threads, batch, 'ema')} | {shown(impl, threads, batch, 'ma')} "
                f"| {fmt_overhead(none, ema)} | {fmt_overhead(none, ma)} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
