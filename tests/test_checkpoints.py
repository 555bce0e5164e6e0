"""Checkpoint files: atomic layout, verification, fallback to an older one; ledger resumption."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from fedcore.params import ModelLayout, module_vectors
from fedcore.server.checkpoints import (
    CheckpointError,
    CheckpointStore,
    CheckpointWriter,
    ServerState,
    pack,
    unpack,
)
from fedcore.server.disk import DiskFault
from fedcore.server.ledger import Ledger, read_ledger
from fedcore.server.rundir import model_frames, read_model_file
from fedcore.strategies.base import GlobalModel

MODULE = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
LAYOUT = ModelLayout.of(MODULE)


def _state(version: int) -> ServerState:
    params, buffers = module_vectors(MODULE, LAYOUT)
    return ServerState(
        model=GlobalModel(params + version, buffers, version),
        time=1.5 * version,
        strategy={
            "rng": {"state": {"state": 2**100 + version, "inc": 7}},
            "moments": [torch.full((3,), float(version)), {"v": torch.arange(4)}],
            "round": version,
        },
        timers={"round-deadline-1": 9.0},
        registry={"clients": ["a", "b"], "profiles": {}},
        ledger_position=100 * version,
    )


def test_pack_moves_every_tensor_out_and_unpack_restores_it() -> None:
    tensors: dict[str, torch.Tensor] = {}
    state = _state(2).strategy
    document = json.loads(json.dumps(pack(state, tensors)))
    assert len(tensors) == 2
    restored = unpack(document, tensors)
    assert torch.equal(restored["moments"][0], state["moments"][0])
    assert torch.equal(restored["moments"][1]["v"], state["moments"][1]["v"])
    assert restored["rng"] == state["rng"] and restored["round"] == 2
    with pytest.raises(TypeError, match="cannot checkpoint a set"):
        pack({"bad": {1, 2}}, {})


def test_saved_checkpoint_reads_back_exactly_and_old_ones_are_pruned(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "checkpoints", keep=2)
    for version in (1, 2, 3):
        store.save(_state(version))
    assert [p.name for p in store.checkpoints()] == ["v00000003", "v00000002"]
    assert sorted(p.name for p in store.checkpoints()[0].iterdir()) == [
        "manifest.json",
        "state.json",
        "tensors.fct",
    ]
    loaded = store.load_latest(LAYOUT, print)
    assert loaded is not None
    expected = _state(3)
    assert loaded.model.version == 3 and torch.equal(loaded.model.params, expected.model.params)
    assert torch.equal(loaded.strategy["moments"][0], expected.strategy["moments"][0])
    assert loaded.strategy["rng"] == expected.strategy["rng"]
    assert (loaded.time, loaded.timers, loaded.ledger_position) == (
        4.5,
        {"round-deadline-1": 9.0},
        300,
    )


def nest_state(path: Path) -> None:
    """Replace state.json by JSON nested 8,000 deep, with a manifest that matches it."""
    deep = ("[" * 8000 + "]" * 8000).encode()
    (path / "state.json").write_bytes(deep)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["state.json"] = hashlib.sha256(deep).hexdigest()
    (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: _flip(p / "tensors.fct"), "tensors.fct does not match the sha256"),
        (lambda p: _flip(p / "state.json"), "state.json does not match the sha256"),
        (lambda p: (p / "manifest.json").unlink(), "missing or unreadable file"),
        (lambda p: (p / "manifest.json").write_text("{}"), "manifest is not format 1"),
        (lambda p: (p / "manifest.json").write_text("[" * 8000), "nested deeper than 32"),
        (nest_state, "nested deeper than 32"),
    ],
)
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(
    tmp_path: Path, damage, reason: str
) -> None:
    store = CheckpointStore(tmp_path, keep=3)
    for version in (1, 2):
        store.save(_state(version))
    damage(store.checkpoints()[0])
    lines: list[str] = []
    loaded = store.load_latest(LAYOUT, lines.append)
    assert loaded is not None and loaded.model.version == 1
    assert len(lines) == 1 and "v00000002" in lines[0] and reason in lines[0]


def test_a_checkpoint_for_another_model_is_refused(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(_state(1))
    other = ModelLayout.of(nn.Linear(3, 5))
    with pytest.raises(CheckpointError, match=r"no usable checkpoint.*does not match spec"):
        store.load_latest(other, print)


def test_check_can_reject_a_checkpoint_and_none_at_all_is_none(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    assert store.load_latest(LAYOUT, print) is None
    store.save(_state(1))
    store.save(_state(2))

    def small_ledger(state: ServerState) -> None:
        if state.ledger_position > 150:
            raise CheckpointError("ledger too short")

    loaded = store.load_latest(LAYOUT, lambda line: None, small_ledger)
    assert loaded is not None and loaded.model.version == 1


def test_ledger_resume_voids_entries_after_the_checkpoint(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.record("accepted", client=0, base_version=0)
    ledger.record("model", version=1)
    position = ledger.position()
    ledger.record("accepted", client=1, base_version=1)
    ledger.close()
    resumed = Ledger(tmp_path / "ledger.jsonl")
    assert resumed.resume(position, version=1) == 1
    assert resumed.counts == {"accepted": 1, "model": 1, "resumed": 1}
    resumed.record("accepted", client=1, base_version=1)
    resumed.close()
    everything = read_ledger(tmp_path / "ledger.jsonl")
    effective = read_ledger(tmp_path / "ledger.jsonl", effective=True)
    assert [e["event"] for e in everything] == [
        "accepted",
        "model",
        "accepted",
        "resumed",
        "accepted",
    ]
    assert [e["event"] for e in effective] == ["accepted", "model", "resumed", "accepted"]
    with pytest.raises(ValueError, match="checkpoint expects"):
        Ledger(tmp_path / "ledger.jsonl").resume(10**6, version=1)


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_line_cut_short_by_a_crash_is_voided_by_the_resume(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    ledger.record("model", version=1)
    position = ledger.position()
    ledger.close()
    with path.open("ab") as handle:
        handle.write(b'{"event":"accep')
    with pytest.raises(ValueError, match="not JSON"):
        read_ledger(path)
    resumed = Ledger(path)
    assert resumed.resume(position, version=1) == 1
    resumed.record("model", version=2)
    resumed.close()
    assert [e["event"] for e in read_ledger(path, effective=True)] == ["model", "resumed", "model"]


def test_a_model_file_reads_back_as_the_flat_vectors_it_was_written_from(tmp_path: Path) -> None:
    model = _state(4).model
    (tmp_path / "model.fct").write_bytes(b"".join(model_frames(model, LAYOUT)))
    params, buffers = read_model_file(tmp_path / "model.fct", LAYOUT)
    assert torch.equal(params, model.params) and torch.equal(buffers, model.buffers)
    with pytest.raises(ValueError, match="tensor names differ"):
        read_model_file(tmp_path / "model.fct", ModelLayout.of(nn.Linear(3, 4)))


def test_background_writer_freezes_the_state_when_submitted(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "checkpoints", keep=5)
    lines: list[str] = []
    writer = CheckpointWriter(store, lines.append)
    states = [_state(version) for version in (1, 2, 3)]
    for state in states:
        writer.submit(state)
        state.strategy["moments"][0].add_(100.0)  # the strategy moves on at once
    writer.drain()
    assert lines == []
    assert [p.name for p in store.checkpoints()] == ["v00000003", "v00000002", "v00000001"]
    written = store.load_latest(LAYOUT, lines.append)
    assert written is not None and written.model.version == 3
    assert torch.equal(written.strategy["moments"][0], torch.full((3,), 3.0))
    assert torch.equal(written.model.params, states[2].model.params)


def test_background_writer_reports_a_failed_write(tmp_path: Path) -> None:
    blocker = tmp_path / "checkpoints"
    blocker.write_text("a file where the folder should be")
    lines: list[str] = []
    writer = CheckpointWriter(CheckpointStore(blocker), lines.append)
    writer.submit(_state(1))
    with pytest.raises(DiskFault, match="failed 3 times"):
        writer.drain()
    assert lines and lines[0].startswith("writing a checkpoint failed 3 times: [Errno 17]")
    faults: list[DiskFault] = []
    writer = CheckpointWriter(CheckpointStore(blocker), lines.append)
    writer.on_fault = faults.append
    writer.submit(_state(1))
    with pytest.raises(DiskFault):
        writer.drain()
    assert len(faults) == 1 and len(lines) == 1, "a fault goes to on_fault, not the log"
