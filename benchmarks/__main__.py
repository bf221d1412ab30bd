"""Measure what users feel, side by side in one run: ``python -m benchmarks``.

Prints a table of figures, each a ratio against its baseline from the same run (absolute times
as context), and writes it as JSON (``--json``, default ``benchmarks/results.json``). Exits 1 when
a figure misses its target. ``--only KEY`` runs some figures; ``--quick`` uses small sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import figures, store
from .figures import Figure

# Each figure: the function that measures it, its full sizes, and its --quick sizes.
PLAN: dict[str, tuple[Callable[..., Figure | list[Figure]], dict[str, Any], dict[str, Any]]] = {
    "overhead": (figures.call_overhead, {"rounds": 30}, {"rounds": 5}),
    "stream-latency": (figures.stream_latency, {"lines": 300}, {"lines": 100}),
    "stream-memory": (figures.stream_memory, {"megabytes": 200}, {"megabytes": 20}),
    "workflow-parallel": (figures.parallel_workflow, {"sessions": 8}, {"sessions": 8}),
    "workflow-sequential": (figures.sequential_workflow, {"steps": 50, "rounds": 5},
                            {"steps": 50, "rounds": 2}),
    "fan-out": (figures.fan_out, {"elements": 1000, "parallel": 16},
                {"elements": 200, "parallel": 16, "small": 50}),
    "mapping": (figures.big_mapping, {"sizes": (10, 5_000, 10_000)},
                {"sizes": (10, 5_000, 10_000), "rounds": 3}),
    "concurrent-creates": (figures.concurrent_creates, {"processes": 32, "creates": 25},
                           {"processes": 8, "creates": 5}),
    "kill-writers": (figures.kill_writers, {"rounds": 200}, {"rounds": 20}),
    "bundle": (figures.bundle_throughput, {"sessions": 1000, "kilobytes": 1024, "rounds": 3},
               {"sessions": 100, "kilobytes": 256, "rounds": 1}),
    "bundle-mapping": (figures.import_into_big_mapping, {"size": 10_000, "rounds": 7},
                       {"size": 10_000, "rounds": 3}),
    "store-resume": (store.store_resume, {"rounds": 20}, {"rounds": 5}),
    "store-throughput": (store.store_throughput, {"machines": 8, "sessions": 4, "seconds": 60},
                         {"machines": 8, "sessions": 4, "seconds": 10}),
}


def table(results: list[Figure]) -> str:
    rows = [("FIGURE", "VALUE", "TARGET", "OK", "BASELINE")]
    for f in results:
        rows.append((f.what, f"{f.value:g} {f.unit}", f.target, "ok" if f.ok else "MISSED",
                     f.baseline))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    parser.add_argument("--only", action="append", choices=sorted(PLAN), default=None,
                        help="run only this figure (repeatable)")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results.json",
                        help="where to write the results (default: benchmarks/results.json)")
    args = parser.parse_args(argv)
    results: list[Figure] = []
    started = time.perf_counter()
    for key, (measure, full, quick) in PLAN.items():
        if args.only and key not in args.only:
            continue
        print(f"measuring {key} ...", file=sys.stderr, flush=True)
        measured = measure(**(quick if args.quick else full))
        for figure in measured if isinstance(measured, list) else [measured]:
            results.append(figure)
            print(f"  {figure.what}: {figure.value:g} {figure.unit} "
                  f"({'ok' if figure.ok else 'MISSED'}; target {figure.target}) "
                  f"{json.dumps(figure.context)}", file=sys.stderr, flush=True)
    print(table(results))
    report = {
        "quick": args.quick,
        "python": platform.python_version(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "seconds": round(time.perf_counter() - started, 1),
        "figures": [f.as_json() for f in results],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.json}", file=sys.stderr)
    return 0 if all(f.ok for f in results) else 1


if __name__ == "__main__":
    sys.exit(main())
