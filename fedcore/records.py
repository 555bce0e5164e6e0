"""The two records that cross between server and clients: Task (what to do) and Update (what came back).

Both are transport-neutral: the simulation hands them over in memory, deployment encodes them
as protobuf control fields plus tensor frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import torch


class WorkKind(StrEnum):
    """Kinds of local work a client can be asked to do."""

    SGD = "sgd"
    EVALUATE = "evaluate"
    #: FedAMD anchor: the mean gradient at the received model over a large random batch.
    ANCHOR = "anchor"
    #: FedAMD miner: recursive variance-reduced steps from `extras["direction"]`.
    MINER = "miner"


@dataclass(frozen=True)
class Task:
    """What the server asks one client to do, starting from global model `version`."""

    client_id: int
    version: int
    kind: WorkKind = WorkKind.SGD
    local_steps: int = 1
    hyper: dict[str, float] = field(default_factory=dict)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    deadline: float | None = None
    seed: int = 0


@dataclass(frozen=True)
class DenseDelta:
    """A full-size parameter delta: trained minus received weights."""

    values: torch.Tensor


@dataclass(frozen=True)
class SparseDelta:
    """A delta that is zero outside `indices` (pruned or top-k updates)."""

    indices: torch.Tensor
    values: torch.Tensor


Payload = DenseDelta | SparseDelta


@dataclass(frozen=True)
class Update:
    """What a client returns for a Task."""

    client_id: int
    base_version: int
    num_examples: int
    payload: Payload
    buffers: torch.Tensor | None = None
    local_steps: int = 0
    compute_seconds: float = 0.0
    wall_seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data this update carries."""
        tensors: list[torch.Tensor] = [
            t for t in vars(self.payload).values() if isinstance(t, torch.Tensor)
        ]
        if self.buffers is not None:
            tensors.append(self.buffers)
        return sum(t.numel() * t.element_size() for t in tensors)


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


def dense_delta(payload: Payload, numel: int) -> torch.Tensor:
    """The flat delta a payload stands for, as a dense vector of `numel` elements."""
    if isinstance(payload, DenseDelta):
        if payload.values.shape != (numel,):
            raise ValueError(
                f"dense delta has shape {tuple(payload.values.shape)}, want ({numel},)"
            )
        return payload.values
    indices = payload.indices
    if indices.shape != payload.values.shape or indices.dim() != 1:
        raise ValueError("sparse delta needs 1-D indices and values of the same length")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= numel):
        raise ValueError(f"sparse delta index out of range for {numel} parameters")
    out = torch.zeros(numel, dtype=payload.values.dtype)
    out[indices] = payload.values
    return out


def describe(update: Update) -> dict[str, Any]:
    """Scalar fields of an update, for ledgers and logs."""
    return {
        "client": update.client_id,
        "base_version": update.base_version,
        "examples": update.num_examples,
        "steps": update.local_steps,
        "payload": type(update.payload).__name__,
        "bytes": update.nbytes,
    }
