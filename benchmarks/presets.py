"""The shipped experiment presets on a busy machine: wall time beside a CPU hog against one
pinned thread on a quiet machine.

Each preset (`fedcore sim +experiment=heart`, `+experiment=shakespeare rounds=2`) runs as
`python -m fedcore.cli sim` in a fresh process: first quiet with `threads=1
simulation.workers=0` (the baseline: everything on one thread), then as shipped (the default
thread and worker policy) beside one busy process per core (`cpu_hog`), then as shipped quiet.
Each is run `--runs` times and summarised by its median wall time; the hog run is held to
RATIO_TARGET x the quiet one-thread baseline. Every run of a preset must end on the same model
(its summary's sha256): the worker count never changes a result.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    REPO_ROOT,
    cpu_hog,
    environment,
    make_parser,
    print_table,
    verdict,
    write_result,
)

NAME = "presets"
#: Beside the hog, the preset as shipped at most this multiple of one quiet pinned thread.
RATIO_TARGET = 1.5
PRESETS = {
    "heart": ["+experiment=heart"],
    "shakespeare": ["+experiment=shakespeare", "rounds=2"],
}
QUICK_PRESETS = {"heart": ["+experiment=heart", "rounds=10"]}
ONE_THREAD = ["threads=1", "simulation.workers=0"]


def run_preset(overrides: Sequence[str]) -> dict[str, Any]:
    """Wall seconds of one `fedcore sim` in a fresh process, with its summary's workers and
    model digest."""
    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "fedcore.cli",
                "sim",
                *overrides,
                "output.progress=off",
                f"hydra.run.dir={run_dir}",
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        seconds = time.perf_counter() - started
        if done.returncode:
            raise RuntimeError(f"fedcore sim {' '.join(overrides)} failed:\n{done.stderr}")
        summary = json.loads((Path(run_dir) / "summary.json").read_text(encoding="utf-8"))
    return {
        "seconds": seconds,
        "workers": summary["workers"],
        "threads": summary["threads"],
        "model_sha256": summary["model_sha256"],
    }


def measure(overrides: Sequence[str], runs: int) -> dict[str, Any]:
    """`runs` fresh runs: each one's figures and the median wall seconds."""
    results = [run_preset(overrides) for _ in range(runs)]
    return {
        "overrides": list(overrides),
        "runs": results,
        "median_s": statistics.median(run["seconds"] for run in results),
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Measure each preset quiet on one thread, as shipped beside the hog, and as shipped quiet;
    print the table and write the JSON result."""
    parser = make_parser("Presets beside a CPU hog against one quiet pinned thread.")
    parser.add_argument("--runs", type=int, default=3, help="fresh runs per measurement")
    args = parser.parse_args(argv)
    presets = QUICK_PRESETS if args.quick else PRESETS
    runs = 1 if args.quick else args.runs
    env = environment()
    cases: dict[str, dict[str, Any]] = {}
    for name, overrides in presets.items():
        one_thread = measure([*overrides, *ONE_THREAD], runs)
        with cpu_hog() as hogs:
            hogged = measure(overrides, runs)
        shipped = measure(overrides, runs)
        digests = {
            run["model_sha256"]
            for measured in (one_thread, hogged, shipped)
            for run in measured["runs"]
        }
        cases[name] = {
            "one_thread_quiet": one_thread,
            "shipped_beside_hog": hogged,
            "shipped_quiet": shipped,
            "busy_processes": hogs,
            "ratio": hogged["median_s"] / one_thread["median_s"],
            "same_model": len(digests) == 1,
        }
    print_table(
        f"Presets: median wall seconds of {runs} fresh run(s) each",
        [
            "preset",
            "1 thread, quiet (s)",
            "shipped, quiet (s)",
            "shipped, hog (s)",
            "workers",
            "hog / 1 thread",
            "same model",
        ],
        [
            [
                name,
                f"{case['one_thread_quiet']['median_s']:.1f}",
                f"{case['shipped_quiet']['median_s']:.1f}",
                f"{case['shipped_beside_hog']['median_s']:.1f}",
                case["shipped_quiet"]["runs"][0]["workers"],
                f"{case['ratio']:.2f}x",
                "yes" if case["same_model"] else "NO",
            ]
            for name, case in cases.items()
        ],
    )
    for name, case in cases.items():
        print(
            f"{name}: beside the hog {case['ratio']:.2f}x one quiet thread <= {RATIO_TARGET}x: "
            f"{verdict(case['ratio'] <= RATIO_TARGET)}"
        )
    result = {
        "benchmark": NAME,
        "quick": args.quick,
        "environment": env,
        "cases": cases,
        "target_ratio": RATIO_TARGET,
        "passed": all(
            case["ratio"] <= RATIO_TARGET and case["same_model"] for case in cases.values()
        ),
    }
    print(f"wrote {write_result(NAME, result, args.out)}")


if __name__ == "__main__":
    main()
