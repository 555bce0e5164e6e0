"""`fedcore report`: runs and sweeps side by side, as a table and an overlay plot.

A run is a directory with `metrics.jsonl` (its summary, if it finished, is `summary.json`);
a sweep directory holds one run per job. The table has each run's final and best accuracy,
when it first reached a target accuracy (model version, and run time: simulated seconds in a
simulation, wall seconds when deployed) and the bytes it moved; runs that differ only in their
seed are also summarised together, mean and spread.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcore.server.plots import pyplot
from fedcore.server.tables import text_table

#: Metrics rows and summaries are the run owner's files, but a report reads many of them:
#: a file larger than this is refused rather than read whole.
MAX_RUN_FILE_BYTES = 256 << 20


@dataclass
class Run:
    """One run's metrics rows and summary (empty when it has not finished)."""

    path: Path
    rows: list[dict[str, Any]]
    summary: dict[str, Any]

    @property
    def overrides(self) -> list[str]:
        """The command-line overrides the run was composed with (from its summary)."""
        return [str(o) for o in self.summary.get("overrides", [])]

    def values(self, metric: str) -> list[tuple[int, float]]:
        """(model version, value) of `metric` in every row that has a finite one."""
        return [
            (int(row["version"]), float(row[metric]))
            for row in self.rows
            if isinstance(row.get(metric), int | float) and math.isfinite(row[metric])
        ]

    def reached(self, metric: str, target: float) -> dict[str, Any] | None:
        """The first row whose `metric` is at least `target`."""
        for row in self.rows:
            value = row.get(metric)
            if isinstance(value, int | float) and value >= target:
                return row
        return None


def find_runs(directories: list[Path]) -> list[Run]:
    """The runs in `directories`: each one itself, or the runs below it, in path order."""
    runs: list[Run] = []
    for directory in directories:
        if not directory.is_dir():
            raise ValueError(f"{directory}: not a directory")
        found = sorted(p.parent for p in directory.rglob("metrics.jsonl"))
        if not found:
            raise ValueError(f"{directory}: no run below it (no metrics.jsonl)")
        runs.extend(_read_run(path) for path in found)
    return runs


def _read(path: Path) -> str:
    size = path.stat().st_size
    if size > MAX_RUN_FILE_BYTES:
        raise ValueError(f"{path}: {size} bytes, more than a run file has ({MAX_RUN_FILE_BYTES})")
    return path.read_text(encoding="utf-8")


def _read_run(path: Path) -> Run:
    rows = []
    for line in _read(path / "metrics.jsonl").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # the last line of a run that was killed while writing it
    summary_path = path / "summary.json"
    summary = json.loads(_read(summary_path)) if summary_path.exists() else {}
    return Run(path, rows, summary)


def distinct_overrides(runs: list[Run]) -> list[list[str]]:
    """Each run's overrides that not every run shares: what sets it apart."""
    shared = set.intersection(*(set(run.overrides) for run in runs)) if runs else set()
    return [[o for o in run.overrides if o not in shared] for run in runs]


def labels(runs: list[Run], base: Path) -> list[str]:
    """Each run's name: the overrides that set it apart, else its path below `base`."""
    names = []
    for run, distinct in zip(runs, distinct_overrides(runs), strict=True):
        relative = run.path.relative_to(base) if run.path.is_relative_to(base) else run.path
        path = str(relative) if str(relative) != "." else run.path.name
        names.append(",".join(distinct) or path)
    return names


def _number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _moved(run: Run) -> float:
    """Megabytes a run moved (its summary's count, else its last row's)."""
    source = run.summary if "bytes_down" in run.summary else (run.rows[-1] if run.rows else {})
    return (source.get("bytes_down", 0) + source.get("bytes_up", 0)) / 1e6


def run_table(runs: list[Run], base: Path, metric: str, target: float | None) -> str:
    """One row per run: what it ran, its final and best `metric`, when it first reached
    `target`, its wall seconds, the megabytes it moved and why it stopped."""
    header = ["run", "strategy", "dataset", "seed", "versions", "final", "best", "best at"]
    if target is not None:
        header += [f"to {target:g}", "time to"]
    header += ["wall s", "MB moved", "stopped"]
    lines = [header]
    for run, label in zip(runs, labels(runs, base), strict=True):
        values = run.values(metric)
        best = max(values, key=lambda point: point[1]) if values else None
        last = run.rows[-1] if run.rows else {}
        summary = run.summary
        line = [
            label,
            str(summary.get("strategy", "?")),
            str(summary.get("dataset", "?")),
            str(summary.get("seed", "?")),
            str(summary.get("versions", last.get("version", "?"))),
            _number(values[-1][1] if values else None),
            _number(best[1] if best else None),
            str(best[0]) if best else "-",
        ]
        if target is not None:
            hit = run.reached(metric, target)
            line += [
                str(hit["version"]) if hit else "-",
                _number(hit.get("time") if hit else None, 1),
            ]
        line += [
            _number(last.get("wall"), 1),
            f"{_moved(run):.1f}",
            str(summary.get("stop_reason", "not finished")),
        ]
        lines.append(line)
    return text_table(lines)


def seed_groups(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs grouped by their overrides other than the seed (a configuration's repeats)."""
    groups: dict[str, list[Run]] = {}
    for run, distinct in zip(runs, distinct_overrides(runs), strict=True):
        key = ",".join(o for o in distinct if not o.lstrip("+").startswith("seed="))
        groups.setdefault(key or "(all runs)", []).append(run)
    return groups


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def group_table(groups: dict[str, list[Run]], metric: str) -> str:
    """One row per configuration: its runs' final and best `metric`, mean ± sample spread."""
    lines = [["configuration", "runs", "final", "best"]]
    for key, runs in groups.items():
        finals = [run.values(metric)[-1][1] for run in runs if run.values(metric)]
        bests = [max(v for _, v in run.values(metric)) for run in runs if run.values(metric)]
        lines.append([key, str(len(runs)), _spread(finals), _spread(bests)])
    return text_table(lines)


def plot_runs(runs: list[Run], base: Path, metric: str, path: Path) -> None:
    """Write an overlay plot: `metric` of every run against model version and run time."""
    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(12, 5), constrained_layout=True)
    for run, label in zip(runs, labels(runs, base), strict=True):
        points = [
            (row["version"], row.get("time", math.nan), row[metric])
            for row in run.rows
            if isinstance(row.get(metric), int | float)
        ]
        if not points:
            continue
        versions, walls, values = zip(*points, strict=True)
        axes[0].plot(versions, values, marker=".", label=label)
        axes[1].plot(walls, values, marker=".", label=label)
    for axis, x_label in zip(
        axes,
        ("model version (round)", "run time [s] (simulated, or wall when deployed)"),
        strict=True,
    ):
        axis.set_xlabel(x_label)
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    figure.savefig(path, dpi=100)
    plt.close(figure)


def report_main(argv: list[str]) -> int:
    """`fedcore report DIR [DIR ...]`: print the tables and write the plot; 2 on bad input."""
    parser = argparse.ArgumentParser(
        prog="fedcore report",
        description="Compare runs: a table of each run (and of each configuration over seeds) "
        "and an overlay plot.",
    )
    parser.add_argument("directories", nargs="+", type=Path, help="run or sweep directories")
    parser.add_argument("--metric", default="test_accuracy", help="metrics column to compare")
    parser.add_argument("--target", type=float, help="report when each run first reached it")
    parser.add_argument(
        "--plot",
        type=Path,
        help="where to write the plot (default: report.png in the first directory)",
    )
    args = parser.parse_args(argv)
    try:
        runs = find_runs(args.directories)
    except (OSError, ValueError) as error:
        print(f"fedcore report: {error}", file=sys.stderr)
        return 2
    base = args.directories[0] if len(args.directories) == 1 else Path.cwd()
    print(run_table(runs, base, args.metric, args.target))
    groups = seed_groups(runs)
    if any(len(members) > 1 for members in groups.values()):
        print()
        print(group_table(groups, args.metric))
    plot = args.plot or args.directories[0] / "report.png"
    plot_runs(runs, base, args.metric, plot)
    print(f"\nplot: {plot}")
    return 0
