"""The run plot: accuracy and loss against model version and against the run's time."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any


def pyplot() -> ModuleType:
    """matplotlib's pyplot on the file-only Agg backend, imported when a plot is first drawn
    (importing it costs over a second, which a run's start-up should not pay)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    return matplotlib.pyplot


def plot_metrics(rows: list[dict[str, Any]], path: Path, title: str, clock: str) -> None:
    """Write a 2x2 PNG: accuracy/loss (rows) against version and the run's `clock` time
    ("simulated" or "wall"; columns)."""
    plt = pyplot()
    figure, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    for col, (x_key, x_label) in enumerate(
        (("version", "model version (round)"), ("time", f"{clock} time [s]"))
    ):
        for row_index, metric in enumerate(("accuracy", "loss")):
            axis = axes[row_index][col]
            for prefix, label in (("test_", "central test"), ("fed_", "federated hold-out")):
                points = [(r[x_key], r[prefix + metric]) for r in rows if prefix + metric in r]
                if points:
                    xs, ys = zip(*points, strict=True)
                    axis.plot(xs, ys, marker=".", label=label)
            axis.set_xlabel(x_label)
            axis.set_ylabel(metric)
            axis.grid(alpha=0.3)
            axis.legend()
    figure.suptitle(title)
    figure.savefig(path, dpi=100)
    plt.close(figure)
