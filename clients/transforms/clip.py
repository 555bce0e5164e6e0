"""Norm clipping: scale the delta so that its L2 norm is at most `max_norm` (a zero delta stays
zero). Keeps the payload kind and its bytes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from fedcore.clients.transforms.base import (
    TransformContext,
    UpdateTransform,
    register_transform,
)
from fedcore.payloads import DenseDelta, SparseDelta
from fedcore.records import Update
from fedcore.typed_config import require_positive


@dataclass(frozen=True)
class ClipOptions:
    """The L2 bound C."""

    max_norm: float = 1.0

    def __post_init__(self) -> None:
        require_positive("max_norm", self.max_norm)


@register_transform
class Clip(UpdateTransform[ClipOptions]):
    """delta <- delta * min(1, C / ||delta||), in float64 for the norm."""

    name = "clip"
    options_type = ClipOptions

    def tighten(self, task: ClipOptions, own: ClipOptions) -> ClipOptions:
        """The smaller bound."""
        return ClipOptions(min(task.max_norm, own.max_norm))

    def apply(self, update: Update, options: ClipOptions, context: TransformContext) -> Update:
        """The update with its values scaled into the ball of radius `max_norm`."""
        payload = update.payload
        if not isinstance(payload, DenseDelta | SparseDelta):
            raise TypeError(f"clip takes dense or sparse payloads, not {type(payload).__name__}")
        scaled = clipped(payload.values, options.max_norm)
        if scaled is payload.values:
            return update
        return dataclasses.replace(update, payload=dataclasses.replace(payload, values=scaled))


def clipped(values: torch.Tensor, max_norm: float) -> torch.Tensor:
    """`values` scaled into the L2 ball of radius `max_norm` (the same tensor when inside it,
    so a zero delta is never divided by its norm); the norm is taken in float64."""
    norm = float(torch.linalg.vector_norm(values, dtype=torch.float64))
    if norm <= max_norm:
        return values
    return values * (max_norm / norm)
