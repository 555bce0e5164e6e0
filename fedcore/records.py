"""The two records that cross between server and clients: Task (what to do) and Update (what came back).

Both are transport-neutral: the simulation hands them over in memory, deployment encodes them
as protobuf control fields plus tensor frames (`fedcore/messages.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from fedcore.payloads import DenseDelta, Payload, payload_nbytes

#: How a task's starting model reaches the client: the whole model, only the parameters under
#: `extras["mask"]` (the rest are zero: a pruned sub-model), or nothing (the client rebuilds it
#: from the task's extras, e.g. replayed seeds). A client already holding the version gets only
#: the extras in every case.
Download = Literal["full", "masked", "none"]
DOWNLOADS: tuple[str, ...] = ("full", "masked", "none")
#: Task.extras key of a masked download's mask (bool, one entry per parameter).
MASK = "mask"


@dataclass(frozen=True)
class TransformSpec:
    """One update transform a client applies to its delta before upload, with its options."""

    name: str
    options: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """What the server asks one client to do, starting from global model `version`.

    `technique` names the client technique that does the local work
    (`clients/techniques/`); `hyper` holds its parameters, which the technique decodes into
    its typed parameters (an unknown or mistyped key is an error naming it)."""

    client_id: int
    version: int
    technique: str = "sgd"
    local_steps: int = 1
    hyper: dict[str, float] = field(default_factory=dict)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    deadline: float | None = None
    seed: int = 0
    transforms: tuple[TransformSpec, ...] = ()
    download: Download = "full"


@dataclass(frozen=True)
class Update:
    """What a client returns for a Task."""

    client_id: int
    base_version: int
    num_examples: int
    #: None for work that returns metrics only (evaluation).
    payload: Payload | None
    buffers: torch.Tensor | None = None
    local_steps: int = 0
    compute_seconds: float = 0.0
    wall_seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data this update carries."""
        buffers = self.buffers
        extra = 0 if buffers is None else buffers.numel() * buffers.element_size()
        carried = 0 if self.payload is None else payload_nbytes(self.payload)
        return carried + extra


def delta_update(
    task: Task,
    start: torch.Tensor,
    trained: torch.Tensor,
    buffers: torch.Tensor,
    *,
    num_examples: int,
    steps: int,
    seconds: float,
    metrics: dict[str, float],
    reuse_start: bool = False,
) -> Update:
    """The Update for local work that moved parameters from `start` to `trained`: their
    difference and a copy of the buffers, on the host. `reuse_start` forms the difference in
    `start`'s storage instead of a new tensor."""
    difference = torch.sub(trained, start, out=start) if reuse_start else trained - start
    return Update(
        client_id=task.client_id,
        base_version=task.version,
        num_examples=num_examples,
        payload=DenseDelta(difference.cpu()),
        buffers=buffers.clone().cpu(),
        local_steps=steps,
        compute_seconds=seconds,
        wall_seconds=seconds,
        metrics=metrics,
    )


def describe(update: Update) -> dict[str, Any]:
    """Scalar fields of an update, for ledgers and logs."""
    return {
        "client": update.client_id,
        "base_version": update.base_version,
        "examples": update.num_examples,
        "steps": update.local_steps,
        "payload": "none" if update.payload is None else update.payload.kind,
        "count": 0 if update.payload is None else update.payload.count,
        "bytes": update.nbytes,
    }
