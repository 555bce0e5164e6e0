"""Peak memory of a simulation with 10,000 clients, against the same run with 100.

Each case runs in a fresh process (`--child CLIENTS`): IID partition of 60,000 synthetic
examples (`partition.min_size=1`, no hold-out), 100 clients per round, a few rounds. A fresh
interpreter that imports only torch gives the floor; each child reports its RSS right after
its imports (torch, fedcore, Hydra, rich), after `make_experiment`
(dataset loaded and partitioned, model built), its peak RSS over the whole run
(`ru_maxrss`), and its RSS at the end. The difference between the largest and the 100-client
peaks, divided by the difference in clients, is the memory cost of one client.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import psutil

from benchmarks.common import (
    GB,
    MIB,
    environment,
    make_parser,
    print_table,
    run_child,
    verdict,
    write_result,
)
from fedcore.api import compose
from fedcore.memory import peak_rss_bytes
from fedcore.server.experiment import make_experiment
from fedcore.server.simulation import Simulation

NAME = "memory"
MODULE = f"benchmarks.{NAME}"
PEAK_TARGET_BYTES = 2 * GB
TORCH_ONLY = "import psutil, torch; print(psutil.Process().memory_info().rss)"


@dataclass(frozen=True)
class Shape:
    """The federations compared: client counts (the first is the baseline) and run size."""

    clients: tuple[int, ...]
    clients_per_round: int
    rounds: int
    num_train: int


FULL = Shape(clients=(100, 1_000, 10_000), clients_per_round=100, rounds=3, num_train=60_000)
QUICK = Shape(clients=(100, 1_000), clients_per_round=10, rounds=1, num_train=6_000)


def overrides(shape: Shape, clients: int) -> list[str]:
    """The Hydra overrides of one case."""
    return [
        "dataset=synthetic",
        f"dataset.options.num_train={shape.num_train}",
        f"num_clients={clients}",
        f"clients_per_round={shape.clients_per_round}",
        "partition=iid",
        "partition.min_size=1",
        "partition.holdout=0.0",
        f"rounds={shape.rounds}",
        "training.local_steps=5",
        f"evaluation.every={shape.rounds}",
        "evaluation.federated_clients=0",
        "output.progress=off",
    ]


def torch_import_rss_bytes() -> int:
    """RSS of a fresh interpreter that has imported only torch (and psutil to read it)."""
    done = subprocess.run(
        [sys.executable, "-c", TORCH_ONLY], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def child(shape: Shape, clients: int) -> dict[str, Any]:
    """One case in this (fresh) process: RSS after imports, after set-up, peak, and at the end."""
    process = psutil.Process()
    after_imports = process.memory_info().rss
    started = time.perf_counter()
    config = compose(*overrides(shape, clients))
    experiment = make_experiment(config)
    after_setup = process.memory_info().rss
    result = Simulation(experiment, config).run()
    return {
        "num_clients": clients,
        "versions": result.final.version,
        "model_params": experiment.layout.params.numel,
        "rss_after_imports_bytes": after_imports,
        "rss_after_dataset_bytes": after_setup,
        "peak_rss_bytes": peak_rss_bytes(),
        "final_rss_bytes": process.memory_info().rss,
        "seconds": time.perf_counter() - started,
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Run each case in a fresh process (or be one, with --child N), report, write JSON."""
    parser = make_parser("Peak RSS of a 10,000-client simulation against a 100-client one.")
    parser.add_argument("--child", type=int, metavar="CLIENTS", help="internal: one case")
    args = parser.parse_args(argv)
    shape = QUICK if args.quick else FULL
    if args.child:
        print(json.dumps(child(shape, args.child)))
        return
    env = environment()
    quick = ["--quick"] if args.quick else []
    cases = [run_child(MODULE, "--child", str(clients), *quick) for clients in shape.clients]
    for case in cases:
        del case["spawned_at"]
    torch_only = torch_import_rss_bytes()
    baseline, largest = cases[0], cases[-1]
    per_client = (largest["peak_rss_bytes"] - baseline["peak_rss_bytes"]) / (
        largest["num_clients"] - baseline["num_clients"]
    )
    passed = largest["peak_rss_bytes"] < PEAK_TARGET_BYTES
    print_table(
        f"Simulation memory ({shape.clients_per_round} clients per round, {shape.rounds} rounds, "
        f"{shape.num_train:,} synthetic examples, each case a fresh process)",
        [
            "clients",
            "after imports (MiB)",
            "after dataset+partition (MiB)",
            "peak (MiB)",
            "end (MiB)",
            "peak - baseline (MiB)",
            "seconds",
        ],
        [
            [
                f"{case['num_clients']:,}",
                f"{case['rss_after_imports_bytes'] / MIB:.1f}",
                f"{case['rss_after_dataset_bytes'] / MIB:.1f}",
                f"{case['peak_rss_bytes'] / MIB:.1f}",
                f"{case['final_rss_bytes'] / MIB:.1f}",
                f"{(case['peak_rss_bytes'] - baseline['peak_rss_bytes']) / MIB:+.1f}",
                f"{case['seconds']:.1f}",
            ]
            for case in cases
        ],
    )
    print(f"fresh interpreter after `import torch` alone: {torch_only / MIB:.1f} MiB")
    print(f"memory per client: {per_client / 1024:.2f} KiB")
    print(
        f"peak RSS with {largest['num_clients']:,} clients "
        f"{largest['peak_rss_bytes'] / GB:.2f} GB < {PEAK_TARGET_BYTES / GB:.0f} GB: "
        f"{verdict(passed)}"
    )
    result = {
        "benchmark": NAME,
        "quick": args.quick,
        "environment": env,
        "shape": asdict(shape),
        "overrides": overrides(shape, largest["num_clients"]),
        "rss_import_torch_only_bytes": torch_only,
        "cases": cases,
        "baseline_clients": baseline["num_clients"],
        "per_client_bytes": per_client,
        "peak_target_bytes": PEAK_TARGET_BYTES,
        "passed": passed,
    }
    print(f"wrote {write_result(NAME, result, args.out)}")


if __name__ == "__main__":
    main()
