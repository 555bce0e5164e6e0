"""Top-k sparsification: keep the `fraction` of delta entries largest in magnitude (at least one)
and send them as a sparse payload, by sorted int32 indices or by a bitmask, whichever is smaller.
Bytes go from 4 P to about 8 k (indices) or P / 8 + 4 k (mask) for k kept entries."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from fedcore.clients.transforms.base import (
    TransformContext,
    UpdateTransform,
    register_transform,
)
from fedcore.payloads import DenseDelta, SparseDelta
from fedcore.records import Update
from fedcore.typed_config import require


@dataclass(frozen=True)
class TopKOptions:
    """Share of entries kept, in (0, 1]."""

    fraction: float = 0.1

    def __post_init__(self) -> None:
        require(0 < self.fraction <= 1, "fraction", "must be in (0, 1]", self.fraction)


@register_transform
class TopK(UpdateTransform[TopKOptions]):
    """Dense in, sparse out; ties at the threshold break towards lower positions."""

    name = "topk"
    options_type = TopKOptions
    accepts = ("dense",)

    def produces(self, kind: str) -> str:
        """Always a sparse payload."""
        return "sparse"

    def apply(self, update: Update, options: TopKOptions, context: TransformContext) -> Update:
        """The k largest-magnitude entries, by ascending position."""
        payload = update.payload
        if not isinstance(payload, DenseDelta):
            raise TypeError(f"topk takes a dense payload, not {type(payload).__name__}")
        values = payload.values
        numel = context.numel
        keep = max(1, math.ceil(options.fraction * numel))
        order = torch.argsort(values.abs(), descending=True, stable=True)
        positions = torch.sort(order[:keep]).values
        kept = values[positions]
        if numel / 8 + 4 * keep < 8 * keep:
            bits = np.zeros(numel, dtype=np.uint8)
            bits[positions.numpy()] = 1
            mask = torch.from_numpy(np.packbits(bits, bitorder="little"))
            sparse = SparseDelta(kept, mask=mask)
        else:
            sparse = SparseDelta(kept, indices=positions.to(torch.int32))
        return dataclasses.replace(update, payload=sparse)
