"""Run every benchmark in its own process (so RSS and caches do not carry over), then summarise.

`python -m benchmarks.run_all [--quick] [--out DIR]` streams each benchmark's own tables, then
prints one table of the figures each is judged on, with its target and verdict. The exit
status is 1 when a benchmark crashed (a FAIL verdict is a result, not an error).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks.common import GB, REPO_ROOT, make_parser, print_table, verdict

Row = list[str]


def aggregation_rows(result: dict[str, Any]) -> list[Row]:
    """Streaming/copy and receive/copy throughput ratios of each targeted case, quiet and
    beside the CPU hog."""
    target = result["target_ratio"]
    loads = [("", result["cpu"]), (", hog", result["cpu_beside_hog"]["cases"])]
    return [
        [
            "aggregation",
            f"{path} / copy, {row['clients']} x {row['params']:,}{load}",
            f"{row['ratio'][path]:.2f}x",
            f">= {target}x",
            verdict(row["ratio"][path] >= target),
        ]
        for load, rows in loads
        for row in rows
        if row["targeted"]
        for path in ("streaming", "receive")
    ]


def simulation_rows(result: dict[str, Any]) -> list[Row]:
    """Round time (median and mean), time to the first round, and overhead over plain training."""
    best, targets, passed = result["best"], result["targets"], result["passed"]
    round_target = f"<= {targets['round_s'] * 1e3:.0f} ms"
    return [
        [
            "simulation_overhead",
            "round time, median",
            f"{best['round_median_s'] * 1e3:.1f} ms",
            round_target,
            verdict(passed["round_median"]),
        ],
        [
            "simulation_overhead",
            "round time, mean",
            f"{best['round_mean_s'] * 1e3:.1f} ms",
            round_target,
            verdict(passed["round_mean"]),
        ],
        [
            "simulation_overhead",
            "process start to first round",
            f"{best['process_start_to_first_round_s']:.2f} s",
            f"<= {targets['first_round_s']:.0f} s",
            verdict(passed["first_round"]),
        ],
        [
            "simulation_overhead",
            "median round / plain training loop",
            f"{best['round_to_plain_ratio']:.2f}x",
            "-",
            "-",
        ],
    ]


def memory_rows(result: dict[str, Any]) -> list[Row]:
    """Peak RSS of the largest federation and the memory cost per client."""
    largest = result["cases"][-1]
    return [
        [
            "memory",
            f"peak RSS, {largest['num_clients']:,} clients",
            f"{largest['peak_rss_bytes'] / GB:.2f} GB",
            f"< {result['peak_target_bytes'] / GB:.0f} GB",
            verdict(result["passed"]),
        ],
        [
            "memory",
            f"per client (vs {result['baseline_clients']} clients)",
            f"{result['per_client_bytes'] / 1024:.2f} KiB",
            "-",
            "-",
        ],
    ]


def presets_rows(result: dict[str, Any]) -> list[Row]:
    """Each preset's wall time beside the CPU hog against one quiet pinned thread."""
    target = result["target_ratio"]
    return [
        [
            "presets",
            f"{name}: beside hog / 1 quiet thread",
            f"{case['ratio']:.2f}x",
            f"<= {target}x",
            verdict(case["ratio"] <= target and case["same_model"]),
        ]
        for name, case in result["cases"].items()
    ]


def dp_sgd_rows(result: dict[str, Any]) -> list[Row]:
    """Ghost clipping's step against a plain one."""
    ratio = result["ratio_to_plain"]["ghost"]
    return [
        [
            "dp_sgd",
            "ghost-clipping step / plain step, default MLP",
            f"{ratio:.2f}x",
            f"<= {result['target_ratio']}x",
            verdict(result["passed"]),
        ]
    ]


BENCHMARKS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "aggregation": aggregation_rows,
    "simulation_overhead": simulation_rows,
    "presets": presets_rows,
    "memory": memory_rows,
    "dp_sgd": dp_sgd_rows,
}


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmarks one after another, then print the combined summary."""
    args = make_parser("Run all benchmarks, each in its own process.").parse_args(argv)
    out = args.out.resolve()
    flags = [*(["--quick"] if args.quick else []), "--out", str(out)]
    rows: list[Row] = []
    crashed = False
    for name, summarize in BENCHMARKS.items():
        print(f"\n=== {name} ===", flush=True)
        done = subprocess.run(
            [sys.executable, "-m", f"benchmarks.{name}", *flags], cwd=REPO_ROOT, check=False
        )
        if done.returncode:
            crashed = True
            rows.append([name, "-", f"exit status {done.returncode}", "-", "ERROR"])
            continue
        result = json.loads((out / f"{name}.json").read_text(encoding="utf-8"))
        rows.extend(summarize(result))
    print()
    print_table("Benchmark summary", ["benchmark", "measure", "value", "target", "verdict"], rows)
    print(f"results in {out}")
    if crashed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
