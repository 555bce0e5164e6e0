"""Each strategy and experiment preset against the accuracy docs/strategies.md states for it.

Every strategy preset runs the default experiment (`fedcore sim strategy=NAME`: MNIST, 100
clients with Dirichlet(0.5) label skew, 10 per round, 50 model versions), and each experiment
preset runs as shipped (`+experiment=heart`, `+experiment=shakespeare`), each as a fresh
`fedcore sim` process, seed 0. The table has each run's final and best test accuracy against
its stated floor; the JSON keeps them with each run's stop reason and model digest.
`--quick` runs two presets for three versions and checks nothing (the smoke test's mode).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    REPO_ROOT,
    environment,
    make_parser,
    print_table,
    verdict,
    write_result,
)

NAME = "preset_accuracy"
#: preset -> (overrides, the final test accuracy docs/strategies.md states it reaches).
PRESETS: dict[str, tuple[list[str], float]] = {
    "fedavg": (["strategy=fedavg"], 0.96),
    "fedprox": (["strategy=fedprox"], 0.96),
    "fedavgm": (["strategy=fedavgm"], 0.96),
    "fedadam": (["strategy=fedadam"], 0.97),
    "fedyogi": (["strategy=fedyogi"], 0.97),
    "fedadagrad": (["strategy=fedadagrad"], 0.95),
    "fedasync": (["strategy=fedasync"], 0.91),
    "fedbuff": (["strategy=fedbuff"], 0.95),
    "fedcompass": (["strategy=fedcompass"], 0.94),
    "fedld": (["strategy=fedld"], 0.95),
    "fedlaw": (["strategy=fedlaw"], 0.96),
    "fedamd": (["strategy=fedamd"], 0.84),
    "experiment=heart": (["+experiment=heart"], 0.83),
    "experiment=shakespeare": (["+experiment=shakespeare"], 0.36),
}
QUICK = {
    "fedavg": (["strategy=fedavg", "rounds=3"], 0.0),
    "experiment=heart": (["+experiment=heart", "rounds=3"], 0.0),
}


def run_preset(overrides: Sequence[str]) -> dict[str, Any]:
    """One fresh `fedcore sim` of `overrides`: final and best test accuracy, versions, wall
    seconds, stop reason and model digest."""
    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        command = [sys.executable, "-m", "fedcore.cli", "sim", *overrides]
        command += ["output.progress=off", f"hydra.run.dir={run_dir}"]
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        summary_path = Path(run_dir) / "summary.json"
        if not summary_path.exists():
            raise RuntimeError(f"fedcore sim {' '.join(overrides)} failed:\n{done.stderr}")
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        rows = [
            json.loads(line)
            for line in (Path(run_dir) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        ]
    accuracies = [row["test_accuracy"] for row in rows if row.get("test_accuracy") is not None]
    return {
        "overrides": list(overrides),
        "final_accuracy": accuracies[-1] if accuracies else 0.0,
        "best_accuracy": max(accuracies, default=0.0),
        "versions": summary["versions"],
        "stop_reason": summary["stop_reason"],
        "wall_seconds": seconds,
        "model_sha256": summary["model_sha256"],
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Run every preset; print the table and write the JSON result."""
    args = make_parser("Each preset against its stated accuracy.").parse_args(argv)
    presets = QUICK if args.quick else PRESETS
    env = environment()
    cases = {}
    for name, (overrides, floor) in presets.items():
        case = run_preset(overrides)
        case["stated_accuracy"] = floor
        case["passed"] = case["final_accuracy"] >= floor
        cases[name] = case
        print(f"{name}: {case['final_accuracy']:.4f} ({case['wall_seconds']:.0f} s)", flush=True)
    print_table(
        "Presets: final test accuracy against the stated floor (seed 0)",
        ["preset", "final", "best", "stated", "versions", "wall s", "verdict"],
        [
            [
                name,
                f"{case['final_accuracy']:.4f}",
                f"{case['best_accuracy']:.4f}",
                f">= {case['stated_accuracy']}",
                case["versions"],
                f"{case['wall_seconds']:.0f}",
                verdict(case["passed"]),
            ]
            for name, case in cases.items()
        ],
    )
    result = {
        "benchmark": NAME,
        "quick": args.quick,
        "environment": env,
        "cases": cases,
        "passed": all(case["passed"] for case in cases.values()),
    }
    print(f"wrote {write_result(NAME, result, args.out)}")


if __name__ == "__main__":
    main()
