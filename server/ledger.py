"""An append-only record of every update's fate and every model produced.

Lines are JSON objects appended to `ledger.jsonl` and flushed as they happen, so after a crash the
ledger says exactly which updates were counted; `counts` summarises it for tests and displays.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import IO, Any


class Ledger:
    """Append-only event log, on disk when given a path, in memory always (as counters)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.counts: Counter[str] = Counter()
        self._file: IO[str] | None = path.open("a", encoding="utf-8") if path else None

    def record(self, event: str, **fields: Any) -> None:
        """Append one entry: `event` is accepted, rejected, expired, lost or model."""
        self.counts[event] += 1
        if self._file is not None:
            self._file.write(json.dumps({"event": event, **fields}, separators=(",", ":")) + "\n")
            self._file.flush()

    def close(self) -> None:
        """Close the file (the in-memory counts stay readable)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def read_ledger(path: Path) -> list[dict[str, Any]]:
    """All entries of a ledger file, in order."""
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]
