"""Run-directory writes under faults (`server/disk.py`) and the ledger's per-source budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedcore.server import disk
from fedcore.server.disk import AppendOnlyFile, DiskFault, retried
from fedcore.server.ledger import OTHER_SOURCES, SOURCE_BURST, SOURCE_PERIOD, Ledger


class _HalfWrites:
    """A file whose first `failures` writes put down half their bytes, then raise ENOSPC."""

    def __init__(self, real, failures: int) -> None:
        self.real, self.failures = real, failures

    def write(self, data) -> int:
        if self.failures:
            self.failures -= 1
            self.real.write(bytes(data)[: len(data) // 2])
            raise OSError(28, "No space left on device")
        return self.real.write(data)

    def fileno(self) -> int:
        return self.real.fileno()


@pytest.fixture(autouse=True)
def _no_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(disk, "DISK_PAUSE", 0.0)


def test_a_passing_fault_is_retried_and_leaves_no_half_record(tmp_path: Path) -> None:
    target = AppendOnlyFile(tmp_path / "log")
    target.append(b"first\n")
    target._file = _HalfWrites(target._file, failures=disk.DISK_ATTEMPTS - 1)
    target.append(b"second\n")
    assert (tmp_path / "log").read_bytes() == b"first\nsecond\n"
    assert target.position == len(b"first\nsecond\n")


def test_a_lasting_fault_is_reported_once_and_every_later_append_refused(tmp_path: Path) -> None:
    target = AppendOnlyFile(tmp_path / "log")
    heard: list[DiskFault] = []
    target.on_fault = heard.append
    target.append(b"first\n")
    target._file = _HalfWrites(target._file, failures=10**6)
    with pytest.raises(DiskFault, match=r"writing log failed 3 times: .*No space left"):
        target.append(b"second\n")
    with pytest.raises(DiskFault):
        target.append(b"third\n")
    assert len(heard) == 1
    assert (tmp_path / "log").read_bytes() == b"first\n", "the half records were cut back"


def test_retried_gives_up_with_the_last_error_and_passes_other_errors_through() -> None:
    calls = []

    def failing() -> None:
        calls.append(1)
        raise PermissionError(13, "Permission denied")

    with pytest.raises(DiskFault, match=r"writing x failed 3 times: .*Permission denied"):
        retried(failing, "x")
    assert len(calls) == disk.DISK_ATTEMPTS
    with pytest.raises(ValueError):
        retried(lambda: (_ for _ in ()).throw(ValueError("not a disk error")), "x")


def test_a_flooding_source_writes_a_burst_then_one_entry_a_period(tmp_path: Path) -> None:
    now = [0.0]
    ledger = Ledger(tmp_path / "ledger.jsonl", clock=lambda: now[0])
    for _ in range(SOURCE_BURST + 5):
        ledger.record_limited("join", "mallory", client=1)
    ledger.record_limited("join", "alice", client=2)
    now[0] = SOURCE_PERIOD
    ledger.record_limited("refused", "mallory", reason="again")
    ledger.record_limited("refused", "mallory", reason="and again")
    ledger.close()
    entries = [json.loads(line) for line in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    events = [(e["event"], e.get("client") or e.get("source")) for e in entries]
    assert events == [
        *[("join", 1)] * SOURCE_BURST,
        ("join", 2),
        ("suppressed", "mallory"),
        ("refused", None),
        ("suppressed", "mallory"),
    ]
    assert entries[SOURCE_BURST + 1]["counts"] == {"join": 5}
    assert entries[-1]["counts"] == {"refused": 1}


def test_sources_past_the_tracked_number_share_one_budget(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr("fedcore.server.ledger.MAX_SOURCES", 2)
    ledger = Ledger(tmp_path / "ledger.jsonl", clock=lambda: 0.0)
    for index in range(2 + SOURCE_BURST + 1):
        ledger.record_limited("refused", f"id-{index}", n=index)
    ledger.close()
    entries = [json.loads(line) for line in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    assert entries[-1] == {"event": "suppressed", "source": OTHER_SOURCES, "counts": {"refused": 1}}
