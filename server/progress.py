"""What a person watching a run sees: a live rich panel on a terminal, plain lines elsewhere.

The panel redraws on its own thread, so it keeps moving while the run is busy: the phase
(training, aggregating, evaluating), the updates in since the last model version and the
clients still working, the time left, the newest metrics and a short history of accuracy.
While it is up, whatever libraries write straight to the process's stderr (gRPC's C core)
goes to a log file instead of through the panel."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

#: Accuracies the history sparkline shows.
HISTORY = 40
SPARKS = "▁▂▃▄▅▆▇█"
#: Plain output prints what the run is doing when it has printed nothing for this long.
PLAIN_STATUS_SECONDS = 15.0


@dataclass(frozen=True)
class Activity:
    """What the run is doing now: its phase, the updates in since the last model version, and
    the clients still training and evaluating."""

    phase: str
    updates_in: int
    training: int
    evaluating: int = 0

    def describe(self) -> str:
        """One line: `training: 3 updates in, 7 clients training, 20 evaluating`; a run that
        only waits for clients' evaluations is evaluating."""
        phase = self.phase
        if phase == "training" and not self.training and self.evaluating:
            phase = "evaluating"
        line = f"{phase}: {self.updates_in} updates in, {self.training} clients training"
        return line + (f", {self.evaluating} evaluating" if self.evaluating else "")


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


def sparkline(values: list[float]) -> str:
    """Values as a row of block characters, lowest to highest of their own range."""
    if not values:
        return ""
    low, high = min(values), max(values)
    span = high - low or 1.0
    return "".join(SPARKS[round((v - low) / span * (len(SPARKS) - 1))] for v in values)


class ProgressDisplay:
    """Shows the run's progress as versions are published and metrics rows arrive."""

    def __init__(
        self,
        total_versions: int,
        title: str,
        mode: Literal["auto", "rich", "plain", "off"] = "auto",
        clock: Literal["simulated", "wall"] = "simulated",
        stderr_log: Path | None = None,
    ) -> None:
        """`clock` names the run's time (a simulation's virtual seconds, a deployment's wall
        seconds); `stderr_log` receives the process's stderr while the rich panel is up."""
        if mode == "auto":
            mode = "rich" if sys.stdout.isatty() else "plain"
        self.mode = mode
        self.total = total_versions
        self.title = title
        self.clock_label = "sim time" if clock == "simulated" else "wall time"
        self.stderr_log = stderr_log
        #: What the run is doing now (None: only metrics are shown).
        self.activity: Callable[[], Activity] | None = None
        #: A phase that overrides the activity's (the report's own evaluation).
        self.phase: str | None = None
        self._live: Live | None = None
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
        )
        self._bar = self._progress.add_task(title, total=total_versions)
        self._last: dict[str, Any] = {}
        self._history: deque[float] = deque(maxlen=HISTORY)
        self._saved_stderr: int | None = None
        self._printed = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._status_thread: threading.Thread | None = None

    def __enter__(self) -> ProgressDisplay:
        if self.mode == "rich":
            self._divert_stderr()
            self._live = Live(get_renderable=self._render, console=Console(), refresh_per_second=4)
            self._live.__enter__()
        elif self.mode == "plain":
            self._say(f"{self.title}: {self.total} model versions")
            self._status_thread = threading.Thread(
                target=self._plain_status, name="progress", daemon=True
            )
            self._status_thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._status_thread is not None:
            self._status_thread.join()
        if self._live is not None:
            self._live.__exit__(kind, error, trace)
            self._live = None
        self._restore_stderr()

    def _divert_stderr(self) -> None:
        """Send file descriptor 2 to `stderr_log`: a library writing to it directly would
        break the panel's lines (Python's own stderr is shown above the panel by rich)."""
        if self.stderr_log is None:
            return
        sys.stderr.flush()
        self._saved_stderr = os.dup(2)
        descriptor = os.open(self.stderr_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(descriptor, 2)
        os.close(descriptor)

    def _restore_stderr(self) -> None:
        if self._saved_stderr is None:
            return
        sys.stderr.flush()
        os.dup2(self._saved_stderr, 2)
        os.close(self._saved_stderr)
        self._saved_stderr = None
        assert self.stderr_log is not None
        with contextlib.suppress(OSError):
            if self.stderr_log.stat().st_size:
                print(f"library messages from the run are in {self.stderr_log}", file=sys.stderr)
            else:
                self.stderr_log.unlink()

    def _say(self, line: str) -> None:
        """Print a whole line: the status thread and the run never interleave their text."""
        with self._lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
            self._printed = time.monotonic()

    def _plain_status(self) -> None:
        """Plain output: a line saying what the run does when nothing was printed lately."""
        while not self._stop.wait(1.0):
            if time.monotonic() - self._printed >= PLAIN_STATUS_SECONDS:
                self._say(f"... {self._status()}")

    def _status(self) -> str:
        activity = self.activity() if self.activity is not None else None
        if activity is None:
            return self.phase or "running"
        if self.phase is not None:
            return f"{self.phase} ({activity.describe()})"
        return activity.describe()

    @contextlib.contextmanager
    def phase_of(self, phase: str) -> Iterator[None]:
        """Show `phase` while the block runs."""
        self.phase = phase
        try:
            yield
        finally:
            self.phase = None

    def published(self, version: int) -> None:
        """A model version was published (the bar and the time left follow versions)."""
        self._progress.update(self._bar, completed=version)

    def update(self, row: dict[str, Any]) -> None:
        """Show the newest metrics row."""
        self._last = row
        accuracy = row.get("test_accuracy")
        if isinstance(accuracy, float):
            self._history.append(accuracy)
        self._progress.update(self._bar, completed=row["version"])
        if self.mode == "plain":
            parts = [f"version {row['version']}/{self.total}", f"t={row['time']:.1f}s"]
            parts += [
                f"{k}={_fmt(row.get(k))}" for k in ("test_accuracy", "test_loss", "fed_accuracy")
            ]
            parts.append(f"moved={_human_bytes(row['bytes_down'] + row['bytes_up'])}")
            if "epsilon" in row:
                parts.append(f"epsilon={row['epsilon']:.4g}")
            if row.get("refused"):
                parts.append(f"refused={row['refused']}")
            self._say("  ".join(parts))

    def _render(self) -> Table:
        grid = Table.grid(padding=(0, 2))
        grid.add_row(self._progress)
        grid.add_row(f"[bold]{self._status()}")
        stats = Table(show_header=True, header_style="bold")
        columns = ["version", self.clock_label, "test acc", "test loss", "fed acc", "train loss"]
        columns.append("moved")
        row = self._last
        if "epsilon" in row:
            columns.append("max ε")
        if "refused" in row:
            columns.append("refused")
        for column in columns:
            stats.add_column(column)
        if row:
            cells = [
                str(row["version"]),
                f"{row['time']:.1f} s",
                _fmt(row.get("test_accuracy")),
                _fmt(row.get("test_loss")),
                _fmt(row.get("fed_accuracy")),
                _fmt(row.get("train_loss")),
                _human_bytes(row["bytes_down"] + row["bytes_up"]),
            ]
            if "epsilon" in row:
                cells.append(f"{row['epsilon']:.4g}")
            if "refused" in row:
                cells.append(str(row["refused"]))
            stats.add_row(*cells)
        grid.add_row(stats)
        if self._history:
            history = list(self._history)
            grid.add_row(f"test accuracy {sparkline(history)} {history[0]:.3f} → {history[-1]:.3f}")
        return grid
