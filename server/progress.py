"""What a person watching a run sees: a live rich panel on a terminal, plain lines elsewhere."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any, Literal

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def _human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024:
            return f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TB"


class ProgressDisplay:
    """Shows model version, simulated time, accuracy, loss and bytes moved as rows arrive."""

    def __init__(
        self,
        total_versions: int,
        title: str,
        mode: Literal["auto", "rich", "plain", "off"] = "auto",
    ) -> None:
        if mode == "auto":
            mode = "rich" if sys.stdout.isatty() else "plain"
        self.mode = mode
        self.total = total_versions
        self.title = title
        self._live: Live | None = None
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
        )
        self._bar = self._progress.add_task(title, total=total_versions)
        self._last: dict[str, Any] = {}

    def __enter__(self) -> ProgressDisplay:
        if self.mode == "rich":
            self._live = Live(self._render(), console=Console(), refresh_per_second=4)
            self._live.__enter__()
        elif self.mode == "plain":
            print(f"{self.title}: {self.total} model versions", flush=True)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(kind, error, trace)
            self._live = None

    def update(self, row: dict[str, Any]) -> None:
        """Show the newest metrics row."""
        self._last = row
        self._progress.update(self._bar, completed=row["version"])
        if self._live is not None:
            self._live.update(self._render())
        elif self.mode == "plain":
            parts = [f"version {row['version']}/{self.total}", f"t={row['time']:.1f}s"]
            parts += [
                f"{k}={_fmt(row.get(k))}" for k in ("test_accuracy", "test_loss", "fed_accuracy")
            ]
            parts.append(f"moved={_human_bytes(row['bytes_down'] + row['bytes_up'])}")
            print("  ".join(parts), flush=True)

    def _render(self) -> Table:
        grid = Table.grid(padding=(0, 2))
        grid.add_row(self._progress)
        stats = Table(show_header=True, header_style="bold")
        for column in (
            "version",
            "sim time",
            "test acc",
            "test loss",
            "fed acc",
            "train loss",
            "moved",
        ):
            stats.add_column(column)
        row = self._last
        if row:
            stats.add_row(
                str(row["version"]),
                f"{row['time']:.1f} s",
                _fmt(row.get("test_accuracy")),
                _fmt(row.get("test_loss")),
                _fmt(row.get("fed_accuracy")),
                _fmt(row.get("train_loss")),
                _human_bytes(row["bytes_down"] + row["bytes_up"]),
            )
        grid.add_row(stats)
        return grid
