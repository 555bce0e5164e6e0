"""Nested state on disk without pickle (`fedcore/state_files.py`): exact round trips, and files
that are damaged, foreign or nested too deep are refused with a reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedcore.serialization import frames_of
from fedcore.state_files import StateFileError, load_state, save_state


def test_state_round_trips_exactly(tmp_path: Path) -> None:
    state = {
        "anchor": {"memory": {"3": {"7": torch.randn(5), "9": torch.arange(4)}}},
        "steps": [1, 2.5, None, True, "x"],
    }
    save_state(tmp_path / "s", state)
    back = load_state(tmp_path / "s")
    assert torch.equal(back["anchor"]["memory"]["3"]["7"], state["anchor"]["memory"]["3"]["7"])
    assert torch.equal(back["anchor"]["memory"]["3"]["9"], torch.arange(4))
    assert back["steps"] == [1, 2.5, None, True, "x"]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: data[:-3], "not a usable state file"),
        (lambda data: b"not frames at all", "not a usable state file"),
    ],
)
def test_damaged_state_files_are_refused(tmp_path: Path, damage, reason) -> None:
    path = tmp_path / "s"
    save_state(path, {"a": torch.ones(3)})
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(StateFileError, match=reason):
        load_state(path)


def test_deeply_nested_or_foreign_documents_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "deep"
    document = ("[" * 100_000 + "]" * 100_000).encode()
    frames = frames_of({"state/json": torch.frombuffer(bytearray(document), dtype=torch.uint8)})
    path.write_bytes(b"".join(frames))
    with pytest.raises(StateFileError, match="not a usable state file"):
        load_state(path)
    path.write_bytes(
        b"".join(frames_of({"state/json": torch.tensor(list(b"[1]"), dtype=torch.uint8)}))
    )
    with pytest.raises(StateFileError, match="not a mapping"):
        load_state(path)
    with pytest.raises(StateFileError, match="not a usable state file"):
        load_state(tmp_path / "missing")
