"""Writes to the run directory that ride out a passing fault and stop the run cleanly on a
lasting one (a full or failing disk): each is retried, and an append that fails is cut back, so
the file never keeps half a line."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

#: Tries of a write before it counts as a lasting fault, and the pause before the first retry
#: (doubled each time).
DISK_ATTEMPTS = 3
DISK_PAUSE = 0.1

T = TypeVar("T")


class DiskFault(Exception):
    """A write to the run directory kept failing: the run stops, and resumes from its newest
    checkpoint once the disk is writable again."""


def retried(write: Callable[[], T], what: str) -> T:
    """`write()`, tried DISK_ATTEMPTS times while it raises OSError; then DiskFault naming
    `what` and the last error."""
    for attempt in range(DISK_ATTEMPTS - 1):
        try:
            return write()
        except OSError:
            time.sleep(DISK_PAUSE * 2**attempt)
    try:
        return write()
    except OSError as error:
        raise DiskFault(f"writing {what} failed {DISK_ATTEMPTS} times: {error}") from error


class AppendOnlyFile:
    """A file written only at its end, a whole record at a time: a record is on disk entirely
    or not at all. The first lasting fault is reported to `on_fault` and every later append
    raises it at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.on_fault: Callable[[DiskFault], None] | None = None
        self._file = path.open("ab", buffering=0)
        self.position = self._file.seek(0, os.SEEK_END)
        self._fault: DiskFault | None = None

    def append(self, record: bytes) -> None:
        """Write `record` at the end (retried; DiskFault when it keeps failing)."""
        if self._fault is not None:
            raise self._fault
        try:
            retried(lambda: self._write(record), self.path.name)
        except DiskFault as fault:
            self._fault = fault
            if self.on_fault is not None:
                self.on_fault(fault)
            raise

    def _write(self, record: bytes) -> None:
        start = self.position
        view = memoryview(record)
        try:
            while view:
                written = self._file.write(view)
                if not written:
                    raise OSError(errno.ENOSPC, "no byte could be written")
                view = view[written:]
        except OSError:
            os.ftruncate(self._file.fileno(), start)
            raise
        self.position = start + len(record)

    def close(self) -> None:
        """Close the file."""
        self._file.close()
