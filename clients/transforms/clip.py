"""Norm clipping: scale the delta so that its L2 norm is at most `max_norm` (a zero delta stays
zero). Keeps the payload kind and its bytes."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from fedcore.clients.transforms.base import UpdateTransform, register_transform
from fedcore.payloads import DenseDelta, SparseDelta
from fedcore.records import Update
from fedcore.typed_config import require


@dataclass(frozen=True)
class ClipOptions:
    """The L2 bound C."""

    max_norm: float = 1.0

    def __post_init__(self) -> None:
        require(
            math.isfinite(self.max_norm) and self.max_norm > 0,
            "max_norm",
            "must be finite and > 0",
            self.max_norm,
        )


@register_transform
class Clip(UpdateTransform[ClipOptions]):
    """delta <- delta * min(1, C / ||delta||), in float64 for the norm."""

    name = "clip"
    options_type = ClipOptions

    def apply(self, update: Update, options: ClipOptions, numel: int) -> Update:
        """The update with its values scaled into the ball of radius `max_norm`."""
        payload = update.payload
        if not isinstance(payload, DenseDelta | SparseDelta):
            raise TypeError(f"clip takes dense or sparse payloads, not {type(payload).__name__}")
        norm = float(torch.linalg.vector_norm(payload.values, dtype=torch.float64))
        if norm <= options.max_norm:
            return update
        scaled = payload.values * (options.max_norm / norm)
        return dataclasses.replace(update, payload=dataclasses.replace(payload, values=scaled))
