"""An append-only record of every update's fate and every model produced.

Lines are JSON objects appended to `ledger.jsonl` and flushed as they happen, so after a crash the
ledger says exactly which updates were counted; `counts` summarises it for tests and displays.
A server resumed from a checkpoint never rewrites the file: it appends a `resumed` entry naming
the byte position the checkpoint had reached, and the entries between that position and the
`resumed` entry (work of the lost partial round) stop counting. `read_ledger(effective=True)`
applies that rule.
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
        self._file: IO[bytes] | None = path.open("ab") if path else None

    def record(self, event: str, **fields: Any) -> None:
        """Append one entry: `event` is join, accepted, rejected, refused, expired, lost, model
        or resumed."""
        self.counts[event] += 1
        if self._file is not None:
            line = json.dumps({"event": event, **fields}, separators=(",", ":")) + "\n"
            self._file.write(line.encode())
            self._file.flush()

    def position(self) -> int:
        """Bytes written so far: where the next entry will start."""
        return self._file.tell() if self._file is not None else 0

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
            self._file.write(b"\n")
        self.record("resumed", version=version, position=position, voided=voided)
        return voided

    def close(self) -> None:
        """Close the file (the in-memory counts stay readable)."""
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
