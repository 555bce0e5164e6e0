"""What an update carries: a dense delta, a sparse delta (sorted indices or a bitmask, plus
values), or seeds (indices into the task's seed pool, plus one scalar each).

Each payload kind has its tensors as they travel (`tensors()`), its byte count, a validator that
names what is wrong, and, where one exists, its dense form. Strategies receive the payload itself
and ask for the dense vector only where they need it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import numpy as np
import torch

#: Task.hyper key giving the size K of a seeds task's candidate pool.
SEED_POOL = "seed_pool"
INDEX_DTYPES = (torch.int64, torch.int32)
#: A norm taken in the values' own precision below this may have lost squares to underflow (and
#: an infinite one may be an overflow): it is taken again in float64.
RECHECK_NORM_BELOW = 1e-10


class PayloadError(ValueError):
    """A payload is malformed for the model or the task; the message says what is wrong."""


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def all_finite(vector: torch.Tensor) -> bool:
    """No NaN or Inf: checked through min and max (a NaN or an infinity shows up in one of
    them), several times faster than materialising isfinite() over the whole vector."""
    if vector.numel() == 0:
        return True
    low, high = torch.aminmax(vector)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def l2_norm(values: torch.Tensor) -> float:
    """The L2 norm of `values`, not finite exactly when one of them is not: one read in their
    own precision, a second in float64 only where that precision ran out of range."""
    norm = float(torch.linalg.vector_norm(values))
    if math.isfinite(norm) and norm >= RECHECK_NORM_BELOW:
        return norm
    return float(torch.linalg.vector_norm(values, dtype=torch.float64))


def _check_values(
    values: torch.Tensor, dtype: torch.dtype, what: str, norm: Callable[[], float] | None = None
) -> None:
    """PayloadError unless `values` are 1-D, of `dtype` and finite; `norm`, where given, measures
    their L2 norm, which serves as the finiteness check (instead of a read for min and max)."""
    if values.dim() != 1:
        raise PayloadError(f"{what} must be 1-D, got shape {tuple(values.shape)}")
    if values.dtype != dtype:
        raise PayloadError(f"wrong dtype: {what} are {values.dtype}, the model is {dtype}")
    if not (all_finite(values) if norm is None else math.isfinite(norm())):
        raise PayloadError(f"{what} contain NaN or Inf")


def check_positions(indices: torch.Tensor, limit: int, what: str) -> None:
    """Refuse indices that are not integers, not 1-D, out of [0, limit), duplicated or unsorted."""
    if indices.dtype not in INDEX_DTYPES:
        raise PayloadError(f"wrong dtype: {what} are {indices.dtype}, want int64 or int32")
    if indices.dim() != 1:
        raise PayloadError(f"{what} must be 1-D, got shape {tuple(indices.shape)}")
    if not indices.numel():
        return
    low, high = (int(v) for v in torch.aminmax(indices))
    if low < 0 or high >= limit:
        bad = low if low < 0 else high
        raise PayloadError(f"{what}: index {bad} out of range [0, {limit})")
    steps = indices[1:] - indices[:-1]
    if steps.numel() and int(steps.min()) <= 0:
        position = int(torch.nonzero(steps <= 0)[0]) + 1
        kind = "duplicate" if int(steps[position - 1]) == 0 else "unsorted"
        raise PayloadError(
            f"{what}: {kind} index {int(indices[position])} at position {position} "
            "(indices must be strictly ascending)"
        )


class _Delta:
    """What dense and sparse deltas share: values, counted, and their norm."""

    values: torch.Tensor

    @property
    def count(self) -> int:
        """Entries carried."""
        return self.values.numel()

    @cached_property
    def norm(self) -> float:
        """The L2 norm of the values (`l2_norm`), taken once: the finiteness check, the norm
        bound and the validation's delta-norm limit share it."""
        return l2_norm(self.values)


@dataclass(frozen=True)
class DenseDelta(_Delta):
    """A full-size parameter delta: trained minus received weights."""

    values: torch.Tensor
    kind: ClassVar[str] = "dense"

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors that travel, by wire name."""
        return {"delta": self.values}

    def check(self, numel: int, dtype: torch.dtype) -> None:
        """PayloadError unless this is `numel` finite values of `dtype`."""
        if self.values.shape != (numel,):
            raise PayloadError(
                f"length mismatch: dense delta has shape {tuple(self.values.shape)}, the model "
                f"has {numel} parameters"
            )
        _check_values(self.values, dtype, "delta values", lambda: self.norm)

    def dense(self, numel: int) -> torch.Tensor:
        """The delta as a vector of `numel` elements (itself)."""
        return self.values


@dataclass(frozen=True)
class SparseDelta(_Delta):
    """A delta that is zero outside the listed positions: `indices` (strictly ascending) or
    `mask` (a little-endian bitmask, one bit per parameter, packed in uint8), and `values`."""

    values: torch.Tensor
    indices: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    kind: ClassVar[str] = "sparse"

    def __post_init__(self) -> None:
        if (self.indices is None) == (self.mask is None):
            raise PayloadError("a sparse delta has either indices or a mask")

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors that travel, by wire name."""
        if self.indices is not None:
            return {"indices": self.indices, "values": self.values}
        assert self.mask is not None
        return {"mask": self.mask, "values": self.values}

    def positions(self, numel: int) -> torch.Tensor:
        """The parameter positions of `values`, ascending (int64)."""
        if self.indices is not None:
            return self.indices.long()
        assert self.mask is not None
        bits = np.unpackbits(self.mask.numpy(), count=numel, bitorder="little")
        return torch.from_numpy(np.flatnonzero(bits))

    def check(self, numel: int, dtype: torch.dtype) -> None:
        """PayloadError for indices out of range, duplicated or unsorted, a mask of the wrong
        size or with bits past the model, a length mismatch, or values of the wrong dtype or
        not finite."""
        if self.indices is not None:
            check_positions(self.indices, numel, "sparse indices")
            if self.indices.numel() != self.values.numel():
                raise PayloadError(
                    f"length mismatch: {self.indices.numel()} sparse indices, "
                    f"{self.values.numel()} values"
                )
        else:
            assert self.mask is not None
            want = math.ceil(numel / 8)
            if self.mask.dtype != torch.uint8 or self.mask.shape != (want,):
                raise PayloadError(
                    f"sparse mask must be {want} uint8 bytes for {numel} parameters, got "
                    f"{tuple(self.mask.shape)} {self.mask.dtype}"
                )
            bits = np.unpackbits(self.mask.numpy(), bitorder="little")
            if bits[numel:].any():
                raise PayloadError(f"sparse mask sets bits past the model's {numel} parameters")
            selected = int(bits.sum())
            if selected != self.values.numel():
                raise PayloadError(
                    f"length mismatch: sparse mask selects {selected} parameters, "
                    f"{self.values.numel()} values"
                )
        _check_values(self.values, dtype, "sparse values", lambda: self.norm)

    def dense(self, numel: int) -> torch.Tensor:
        """Zeros of `numel` elements with `values` at their positions."""
        out = torch.zeros(numel, dtype=self.values.dtype)
        out[self.positions(numel)] = self.values
        return out


@dataclass(frozen=True)
class SeedDelta:
    """Zeroth-order steps by shared seeds: `seeds` index the task's seed pool (K candidates,
    `Task.hyper["seed_pool"]`) and `scalars` are the projected gradients, one per seed."""

    seeds: torch.Tensor
    scalars: torch.Tensor
    kind: ClassVar[str] = "seeds"

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors that travel, by wire name."""
        return {"seeds": self.seeds, "scalars": self.scalars}

    @property
    def count(self) -> int:
        """Entries carried."""
        return self.scalars.numel()

    def check_against(self, pool: int, max_count: int) -> None:
        """PayloadError for seed indices outside the pool, duplicated or unsorted, more entries
        than steps, a length mismatch, or scalars that are not finite float32."""
        check_positions(self.seeds, pool, "seed indices")
        if self.seeds.numel() != self.scalars.numel():
            raise PayloadError(
                f"length mismatch: {self.seeds.numel()} seed indices, {self.scalars.numel()} scalars"
            )
        if self.scalars.numel() > max_count:
            raise PayloadError(
                f"{self.scalars.numel()} seed entries, more than the task's {max_count} steps"
            )
        _check_values(self.scalars, torch.float32, "seed scalars")

    def dense(self, numel: int) -> torch.Tensor:
        """Seeds have no dense form without the strategy's perturbation generator."""
        raise PayloadError("a seeds payload has no dense form: the strategy replays its seeds")


Payload = DenseDelta | SparseDelta | SeedDelta
PAYLOAD_KINDS: tuple[str, ...] = (DenseDelta.kind, SparseDelta.kind, SeedDelta.kind)


def payload_nbytes(payload: Payload) -> int:
    """Bytes of tensor data a payload carries."""
    return sum(_nbytes(t) for t in payload.tensors().values())


def payload_from_tensors(kind: str, tensors: Mapping[str, torch.Tensor]) -> Payload:
    """The payload of `kind` made of its wire tensors (the inverse of `tensors()`)."""
    if kind == DenseDelta.kind:
        return DenseDelta(tensors["delta"])
    if kind == SparseDelta.kind:
        return SparseDelta(tensors["values"], tensors.get("indices"), tensors.get("mask"))
    if kind == SeedDelta.kind:
        return SeedDelta(tensors["seeds"], tensors["scalars"])
    raise PayloadError(f"unknown payload kind {kind!r}; known: {list(PAYLOAD_KINDS)}")


def check_payload(
    payload: Payload, numel: int, dtype: torch.dtype, *, seed_pool: int, max_count: int
) -> None:
    """Validate any payload for a model of `numel` parameters of `dtype`; seeds against a pool
    of `seed_pool` candidates and at most `max_count` entries."""
    if isinstance(payload, SeedDelta):
        if seed_pool <= 0:
            raise PayloadError("a seeds payload for a task with no seed pool")
        payload.check_against(seed_pool, max_count)
    else:
        payload.check(numel, dtype)
