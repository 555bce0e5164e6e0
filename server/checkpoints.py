"""Atomic server checkpoints in the run directory, and resuming from the newest good one.

Each checkpoint is a folder `checkpoints/v<version>` holding `tensors.fct` (fedcore tensor
frames: the global model and every tensor in the strategy state), `state.json` (everything
else) and `manifest.json` (sha256 of both), written in that order with fsync, the manifest
last, and then renamed into place. A folder without a valid manifest, or whose files do not
match it, is skipped in favour of the previous one with a log line saying why. Nothing is ever
unpickled: tensors are decoded by the bounded frame parser, the rest is JSON. A deployed server
snapshots its state at publication and writes it on a worker thread (`CheckpointWriter`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedcore.bounded import json_loads
from fedcore.params import ModelLayout
from fedcore.serialization import FrameError, decode_many, frames_of
from fedcore.server.disk import DiskFault, retried
from fedcore.state_files import MAX_STATE_DEPTH, pack, unpack, write_atomically
from fedcore.strategies.base import GlobalModel

FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message says why."""


@dataclass
class ServerState:
    """Everything `fedcore server` needs to continue a run exactly where a checkpoint left it."""

    model: GlobalModel
    time: float
    strategy: dict[str, Any]
    timers: dict[str, float] = field(default_factory=dict)
    registry: dict[str, Any] = field(default_factory=dict)
    ledger_position: int = 0
    #: Bytes sent to and received from clients so far (down, up): counts go on after a resume.
    traffic: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class Snapshot:
    """A server state frozen for writing: its JSON, and tensors no one will modify (the
    published model's own, copies of the strategy's)."""

    version: int
    document: bytes
    tensors: dict[str, torch.Tensor]


def snapshot(state: ServerState) -> Snapshot:
    """Freeze `state` now: the strategy's tensors are copied, since it goes on updating them in
    place while the snapshot is written."""
    tensors = {"model/params": state.model.params, "model/buffers": state.model.buffers}
    strategy_tensors: dict[str, torch.Tensor] = {}
    document = {
        "format": FORMAT,
        "version": state.model.version,
        "time": state.time,
        "strategy": pack(state.strategy, strategy_tensors),
        "timers": state.timers,
        "registry": state.registry,
        "ledger_position": state.ledger_position,
        "traffic": list(state.traffic),
    }
    tensors.update({key: tensor.clone() for key, tensor in strategy_tensors.items()})
    return Snapshot(state.model.version, json.dumps(document).encode(), tensors)


class CheckpointWriter:
    """Writes checkpoints on one worker thread, in order, while the server goes on serving;
    `drain` waits for them all and raises the first failure."""

    def __init__(self, store: CheckpointStore, log: Callable[[str], None]) -> None:
        self.store = store
        self.log = log
        #: Hears (on the worker thread) of a checkpoint the disk kept refusing.
        self.on_fault: Callable[[DiskFault], None] | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._pending: list[Future[Path]] = []

    def submit(self, state: ServerState) -> None:
        """Snapshot `state` now and queue it for writing."""
        checkpoint = snapshot(state)
        future = self._pool.submit(retried, lambda: self.store.write(checkpoint), "a checkpoint")
        future.add_done_callback(self._report)
        written = [f for f in self._pending if f.done() and f.exception() is None]
        self._pending = [f for f in self._pending if f not in written] + [future]

    def _report(self, future: Future[Path]) -> None:
        error = future.exception()
        if isinstance(error, DiskFault) and self.on_fault is not None:
            self.on_fault(error)
        elif isinstance(error, DiskFault):
            self.log(str(error))
        elif error is not None:
            self.log(f"writing a checkpoint failed: {error}")

    def drain(self) -> None:
        """Wait for every queued checkpoint; raise the first failure, if any."""
        pending, self._pending = self._pending, []
        self._pool.shutdown(wait=True)
        for future in pending:
            future.result()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class CheckpointStore:
    """Writes and finds checkpoints under `directory`, keeping the newest `keep`."""

    def __init__(self, directory: Path, keep: int = 3) -> None:
        self.directory = directory
        self.keep = keep

    def save(self, state: ServerState) -> Path:
        """Write one checkpoint atomically: files, fsync, manifest last, rename, prune."""
        return self.write(snapshot(state))

    def write(self, checkpoint: Snapshot) -> Path:
        """Write a snapshot as checkpoint folder v<version> (safe on a worker thread: it
        touches nothing but the snapshot and the folder)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"v{checkpoint.version:08d}"
        staging = self.directory / f".{final.name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            digests = {
                "tensors.fct": write_atomically(
                    staging / "tensors.fct", frames_of(checkpoint.tensors)
                ),
                "state.json": write_atomically(staging / "state.json", checkpoint.document),
            }
            manifest = {"format": FORMAT, "files": digests}
            write_atomically(staging / "manifest.json", json.dumps(manifest).encode())
            _fsync_directory(staging)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)  # give back the space it took
            raise
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        _fsync_directory(self.directory)
        for stale in self.checkpoints()[self.keep :]:
            shutil.rmtree(stale, ignore_errors=True)
        return final

    def checkpoints(self) -> list[Path]:
        """Checkpoint folders, newest first."""
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.iterdir() if p.is_dir() and p.name.startswith("v")]
        return sorted(found, key=lambda p: p.name, reverse=True)

    def load_latest(
        self,
        layout: ModelLayout,
        log: Callable[[str], None],
        check: Callable[[ServerState], None] = lambda state: None,
    ) -> ServerState | None:
        """The newest checkpoint that verifies and passes `check` (which raises CheckpointError),
        logging why each newer one was skipped; None when there is none at all. Raises
        CheckpointError when some exist but none is usable."""
        candidates = self.checkpoints()
        reasons: list[str] = []
        for path in candidates:
            try:
                state = read_checkpoint(path, layout)
                check(state)
                return state
            except CheckpointError as error:
                reasons.append(f"{path.name}: {error}")
                log(f"checkpoint {path} is unusable ({error}); falling back to an older one")
        if candidates:
            raise CheckpointError(
                f"no usable checkpoint in {self.directory}: " + "; ".join(reasons)
            )
        return None


def read_checkpoint(path: Path, layout: ModelLayout) -> ServerState:
    """Verify a checkpoint folder against its manifest and the model layout, then decode it."""
    try:
        manifest = json_loads((path / "manifest.json").read_bytes(), MAX_STATE_DEPTH)
        files = {name: (path / name).read_bytes() for name in ("tensors.fct", "state.json")}
    except (OSError, ValueError) as error:
        raise CheckpointError(f"missing or unreadable file: {error}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"manifest is not format {FORMAT}")
    for name, data in files.items():
        if manifest.get("files", {}).get(name) != _sha256(data):
            raise CheckpointError(f"{name} does not match the sha256 in its manifest")
    try:
        tensors = decode_many(files["tensors.fct"])
        document = json_loads(files["state.json"], MAX_STATE_DEPTH)
        params, buffers = tensors["model/params"], tensors["model/buffers"]
        layout.params.check(params)
        layout.buffers.check(buffers)
        return ServerState(
            model=GlobalModel(params, buffers, int(document["version"])),
            time=float(document["time"]),
            strategy=unpack(document["strategy"], tensors),
            timers={str(k): float(v) for k, v in document["timers"].items()},
            registry=dict(document["registry"]),
            ledger_position=int(document["ledger_position"]),
            traffic=_traffic(document.get("traffic", [0, 0])),  # checkpoints before it: 0
        )
    except (FrameError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"inconsistent contents: {error}") from None


def _traffic(counts: Any) -> tuple[int, int]:
    """A checkpoint's (down, up) byte counts, checked."""
    if (
        not isinstance(counts, list)
        or len(counts) != 2
        or not all(isinstance(c, int) and c >= 0 for c in counts)
    ):
        raise ValueError(f"traffic must be two byte counts, got {counts!r}")
    return counts[0], counts[1]
