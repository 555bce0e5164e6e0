"""Checks every update must pass before it can touch the model."""

from __future__ import annotations

import torch

from fedcore.config import ValidationPolicy
from fedcore.params import ModelLayout
from fedcore.records import Task, Update, dense_delta


class UpdateRejected(ValueError):
    """An update failed validation; the message names the reason."""


def all_finite(vector: torch.Tensor) -> bool:
    """No NaN or Inf: checked through min and max (a NaN or an infinity shows up in one of
    them), several times faster than materialising isfinite() over the whole vector."""
    if vector.numel() == 0:
        return True
    low, high = torch.aminmax(vector)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def validate(
    update: Update, task: Task, layout: ModelLayout, policy: ValidationPolicy
) -> torch.Tensor:
    """The update's dense delta if it is sound for `task`, else UpdateRejected naming why."""
    if update.base_version != task.version:
        raise UpdateRejected(
            f"update is based on version {update.base_version}, the task gave version {task.version}"
        )
    if not 0 < update.num_examples <= policy.max_examples:
        raise UpdateRejected(
            f"claimed example count {update.num_examples} outside (0, {policy.max_examples}]"
        )
    try:
        delta = dense_delta(update.payload, layout.params.numel)
    except ValueError as exc:
        raise UpdateRejected(f"payload does not fit the model: {exc}") from None
    if delta.dtype != layout.params.dtype:
        raise UpdateRejected(f"delta dtype {delta.dtype}, model dtype {layout.params.dtype}")
    if not all_finite(delta):
        raise UpdateRejected("delta contains NaN or Inf")
    if policy.max_delta_norm and float(delta.norm()) > policy.max_delta_norm:
        raise UpdateRejected(
            f"delta norm {float(delta.norm()):.4g} above bound {policy.max_delta_norm}"
        )
    buffers = update.buffers
    if buffers is not None and (
        buffers.shape != (layout.buffers.numel,) or not all_finite(buffers)
    ):
        raise UpdateRejected(f"buffers must be {layout.buffers.numel} finite values")
    return delta
