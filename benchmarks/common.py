"""What the benchmarks share: options, composed configs, best-of timing, child processes, output."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil
import torch
from rich.console import Console
from rich.table import Table

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results"
#: A small synthetic experiment that simulates in about a second (tests use it too).
FAST_OVERRIDES = [
    "dataset=synthetic",
    "model=mlp",
    "num_clients=20",
    "clients_per_round=5",
    "rounds=3",
    "training.local_steps=5",
    "output.progress=off",
    "evaluation.federated_clients=5",
]
GB = 1e9
MIB = 2**20


def make_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark takes: --quick and --out."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes (well under 20 s), for smoke tests"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="folder for the JSON result (default: benchmarks/results)",
    )
    return parser


def no_sync() -> None:
    """The synchronisation of host code: nothing to wait for."""


def best_times(
    candidates: Mapping[str, Callable[[], object]],
    repeats: int,
    sync: Callable[[], None] = no_sync,
) -> dict[str, float]:
    """Best wall seconds of each candidate over `repeats` interleaved passes, after a warm-up.

    Interleaving puts a baseline and the code measured against it under the same machine load;
    `sync` waits for queued device work before and after each timed call.
    """
    best = dict.fromkeys(candidates, math.inf)
    for attempt in range(repeats + 1):
        for name, run in candidates.items():
            sync()
            started = time.perf_counter()
            run()
            sync()
            if attempt:
                best[name] = min(best[name], time.perf_counter() - started)
    return best


def _spin() -> None:
    """Keep one core busy until terminated."""
    while True:
        pass


@contextlib.contextmanager
def cpu_hog() -> Iterator[int]:
    """One busy process per usable core while the block runs: the load of other jobs on a
    shared machine, bounded (the processes are stopped when it ends). Yields their number."""
    count = len(os.sched_getaffinity(0))
    context = multiprocessing.get_context("fork")  # spins at once: nothing to import
    hogs = [context.Process(target=_spin, daemon=True) for _ in range(count)]
    for hog in hogs:
        hog.start()
    try:
        yield count
    finally:
        for hog in hogs:
            hog.terminate()
        for hog in hogs:
            hog.join()


def environment() -> dict[str, Any]:
    """The machine and library versions a result was measured with, and its load at the start."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "load_average_1_5_15_min": [round(load, 2) for load in os.getloadavg()],
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "platform": platform.platform(),
    }


def run_child(module: str, *args: str) -> dict[str, Any]:
    """Run `python -m module *args` in a fresh process from the repository root.

    Returns the JSON object the child prints on its last stdout line, plus `spawned_at`: the
    parent's wall clock (time.time()) just before the child was started.
    """
    spawned_at = time.time()
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise RuntimeError(
            f"{module} {' '.join(args)} exited with {done.returncode}:\n{done.stderr}"
        )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["spawned_at"] = spawned_at
    return result


def write_result(name: str, result: Mapping[str, Any], out: Path) -> Path:
    """Write `result` as `out/<name>.json` (creating `out`) and return the path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return path


def verdict(passed: bool) -> str:
    """PASS or FAIL."""
    return "PASS" if passed else "FAIL"


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a table with rich (wide enough not to wrap when stdout is not a terminal)."""
    console = Console() if sys.stdout.isatty() else Console(width=160)
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    console.print(table)
