"""A run directory: resolved config, metrics (JSONL and CSV), final model, plot, summary."""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from fedcore.params import ModelLayout
from fedcore.serialization import decode_many, frames_of
from fedcore.server.disk import AppendOnlyFile, DiskFault
from fedcore.server.plots import plot_metrics
from fedcore.state_files import write_atomically
from fedcore.strategies.base import GlobalModel


def finite_or_null(value: Any) -> Any:
    """`value` with NaN and infinite numbers (at any depth) as null, so it is valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_null(v) for v in value]
    return value


class RunDirectory:
    """Collects metrics rows and writes the run's artefacts."""

    def __init__(
        self, path: Path, config: dict[str, Any], resume_version: int | None = None
    ) -> None:
        """Start a run directory, or continue one from model `resume_version`: its metrics rows
        up to that version are kept, later ones (of an interrupted round) dropped."""
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o700)  # models, ledger and config are the run owner's alone
        write_atomically(path / "config.yaml", yaml.safe_dump(config, sort_keys=False).encode())
        metrics = path / "metrics.jsonl"
        self.rows: list[dict[str, Any]] = []
        if resume_version is not None and metrics.exists():
            lines = metrics.read_text(encoding="utf-8").splitlines()
            self.rows = [row for row in map(json.loads, lines) if row["version"] <= resume_version]
            write_atomically(metrics, "".join(json.dumps(r) + "\n" for r in self.rows).encode())
        self._metrics = AppendOnlyFile(metrics)
        self.started = time.perf_counter() - (self.rows[-1]["wall"] if self.rows else 0.0)

    def on_fault(self, report: Callable[[DiskFault], None]) -> None:
        """Have `report` hear of a lasting fault writing metrics.jsonl."""
        self._metrics.on_fault = report

    def append(self, row: dict[str, Any]) -> None:
        """Record one metrics row (flushed at once, so a crash keeps what was measured)."""
        row = {**row, "wall": round(time.perf_counter() - self.started, 3)}
        self.rows.append(row)
        self._metrics.append((json.dumps(finite_or_null(row)) + "\n").encode())

    def finish(
        self,
        model: GlobalModel,
        layout: ModelLayout,
        summary: dict[str, Any],
        *,
        save_model: bool,
        plot: bool,
        title: str,
        clock: str,
    ) -> None:
        """Write the CSV, the final model, the plot and summary.json; close files."""
        self._metrics.close()
        if self.rows:
            columns = list(dict.fromkeys(k for row in self.rows for k in row))
            with (self.path / "metrics.csv").open("w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=columns)
                writer.writeheader()
                writer.writerows(self.rows)
        if save_model:
            write_atomically(self.path / "model.fct", model_frames(model, layout))
        if plot and self.rows:
            plot_metrics(self.rows, self.path / "metrics.png", title, clock)
        document = json.dumps(finite_or_null(summary), indent=2)
        write_atomically(self.path / "summary.json", document.encode())


def model_frames(model: GlobalModel, layout: ModelLayout) -> Iterator[bytes | memoryview]:
    """A model as tensor frames named params/<name> and buffers/<name> (no pickle), piece by
    piece."""
    tensors = {f"params/{k}": v for k, v in layout.params.unflatten(model.params).items()}
    tensors.update({f"buffers/{k}": v for k, v in layout.buffers.unflatten(model.buffers).items()})
    return frames_of(tensors)


def read_model_file(path: Path, layout: ModelLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """The flat (params, buffers) of a file of `model_frames`, checked against `layout`."""
    tensors = decode_many(path.read_bytes())
    vectors = []
    for kind, spec in (("params", layout.params), ("buffers", layout.buffers)):
        prefix = f"{kind}/"
        named = {n.removeprefix(prefix): t for n, t in tensors.items() if n.startswith(prefix)}
        vectors.append(spec.flatten(named))
    return vectors[0], vectors[1]
