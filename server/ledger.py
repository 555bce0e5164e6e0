"""An append-only record of every update's fate and every model produced.

Lines are JSON objects appended to `ledger.jsonl` and flushed as they happen, so after a crash the
ledger says exactly which updates were counted; `counts` summarises it for tests and displays.
A server resumed from a checkpoint never rewrites the file: it appends a `resumed` entry naming
the byte position the checkpoint had reached, and the entries between that position and the
`resumed` entry (work of the lost partial round) stop counting. `read_ledger(effective=True)`
applies that rule.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedcore.server.disk import AppendOnlyFile, DiskFault

#: Entries one source may write in a burst (`Ledger.record_limited`), and the seconds after
#: which it may write one more; the rest are counted into one `suppressed` entry.
SOURCE_BURST = 10
SOURCE_PERIOD = 10.0
#: Sources tracked one by one; more share one budget, named OTHER_SOURCES.
MAX_SOURCES = 1024
OTHER_SOURCES = "<other sources>"


class Ledger:
    """Append-only event log, on disk when given a path, in memory always (as counters)."""

    def __init__(
        self, path: Path | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = path
        self.counts: Counter[str] = Counter()
        self._file = AppendOnlyFile(path) if path else None
        self._clock = clock
        #: The run's clock (simulated or wall seconds since the run began): every entry
        #: carries its time when set, as the coordinator does.
        self.run_time: Callable[[], float] | None = None
        self._budgets: dict[str, tuple[float, float]] = {}
        self._suppressed: defaultdict[str, Counter[str]] = defaultdict(Counter)

    def on_fault(self, report: Callable[[DiskFault], None]) -> None:
        """Have `report` hear of a lasting write fault (each record then raises DiskFault)."""
        if self._file is not None:
            self._file.on_fault = report

    def record(self, event: str, **fields: Any) -> None:
        """Append one entry, whole (DiskFault when the disk keeps refusing it): `event` is
        join, accepted, rejected, refused, expired, lost, model, resumed and the like."""
        if self._file is not None:
            entry = {"event": event, **fields}
            if self.run_time is not None:
                entry = {"event": event, "time": round(self.run_time(), 6), **fields}
            line = json.dumps(entry, separators=(",", ":")) + "\n"
            self._file.append(line.encode())
        self.counts[event] += 1

    def record_limited(self, event: str, source: str, **fields: Any) -> None:
        """Append an entry that a client can provoke at will (a join, a refusal): each source
        (a certificate identity) writes SOURCE_BURST of them, then one per SOURCE_PERIOD s; the
        rest are counted, and the count is written as one `suppressed` entry before the
        source's next entry (or at close), so a flood costs a bounded number of lines."""
        if len(self._budgets) >= MAX_SOURCES and source not in self._budgets:
            source = OTHER_SOURCES
        now = self._clock()
        tokens, then = self._budgets.get(source, (float(SOURCE_BURST), now))
        tokens = min(float(SOURCE_BURST), tokens + (now - then) / SOURCE_PERIOD)
        if tokens < 1:
            self._budgets[source] = (tokens, now)
            self._suppressed[source][event] += 1
            return
        self._budgets[source] = (tokens - 1, now)
        self._write_suppressed(source)
        self.record(event, **fields)

    def _write_suppressed(self, source: str) -> None:
        counts = self._suppressed.pop(source, None)
        if counts:
            self.record("suppressed", source=source, counts=dict(counts))

    def position(self) -> int:
        """Bytes written so far: where the next entry will start."""
        return self._file.position if self._file is not None else 0

    def size(self) -> int:
        """Bytes in the ledger file (0 without one)."""
        return self.path.stat().st_size if self.path is not None and self.path.exists() else 0

    def resume(self, position: int, version: int) -> int:
        """Continue after a checkpoint that had written `position` bytes: counts are rebuilt
        from the entries before it, and a `resumed` entry voids the ones after it. Returns how
        many entries were voided."""
        if self.path is None:
            return 0
        data = self.path.read_bytes()
        if len(data) < position:
            raise ValueError(f"ledger has {len(data)} bytes, the checkpoint expects {position}")
        self.counts = Counter(json.loads(line)["event"] for line in _lines(data[:position]))
        voided = len(_lines(data[position:]))
        if data and not data.endswith(b"\n") and self._file is not None:
            self._file.append(b"\n")
        self.record("resumed", version=version, position=position, voided=voided)
        return voided

    def close(self) -> None:
        """Write what was suppressed and close the file (the in-memory counts stay readable)."""
        with contextlib.suppress(DiskFault):  # the fault itself is what the run reports
            for source in list(self._suppressed):
                self._write_suppressed(source)
        if self._file is not None:
            self._file.close()
            self._file = None


def _lines(data: bytes) -> list[bytes]:
    return [line for line in data.split(b"\n") if line.strip()]


def read_ledger(path: Path, effective: bool = False) -> list[dict[str, Any]]:
    """All entries of a ledger file, in order; with `effective`, without the entries a resume
    voided (the `resumed` entries themselves are kept; a line a crash cut short is voided too)."""
    entries: list[tuple[int, dict[str, Any] | None]] = []
    offset = 0
    for line in path.read_bytes().splitlines(keepends=True):
        if line.strip():
            try:
                entry = json.loads(line)
            except ValueError:
                if not effective:
                    raise ValueError(f"{path}: line at byte {offset} is not JSON") from None
                entry = None
            if effective and entry is not None and entry["event"] == "resumed":
                entries = [(start, e) for start, e in entries if start < entry["position"]]
            entries.append((offset, entry))
        offset += len(line)
    kept = [entry for _, entry in entries]
    if None in kept:
        raise ValueError(f"{path}: a line that no resume voided is not JSON")
    return [entry for entry in kept if entry is not None]
