"""Checks every update must pass before it can touch the model, per payload kind."""

from __future__ import annotations

import math

from fedcore.bounded import capped
from fedcore.config import ValidationPolicy
from fedcore.params import ModelLayout
from fedcore.payloads import SEED_POOL, PayloadError, SeedDelta, all_finite, check_payload
from fedcore.records import Task, Update

#: Bounds on what an evaluation reply may claim.
EVALUATION_METRICS = ("eval_loss", "eval_accuracy")


class UpdateRejected(ValueError):
    """An update failed validation; the message names the reason."""


def validate(
    update: Update, task: Task, expected: str, layout: ModelLayout, policy: ValidationPolicy
) -> None:
    """UpdateRejected naming why, unless `update` is sound for `task`, whose upload must carry
    a payload of kind `expected`."""
    bad = sorted(k for k, v in update.metrics.items() if not math.isfinite(v))
    if bad:
        raise UpdateRejected(f"metric {capped(bad[0], 64)!r} is not finite")
    if update.base_version != task.version:
        raise UpdateRejected(
            f"update is based on version {update.base_version}, the task gave version {task.version}"
        )
    if not 0 < update.num_examples <= policy.max_examples:
        raise UpdateRejected(
            f"claimed example count {update.num_examples} outside (0, {policy.max_examples}]"
        )
    payload = update.payload
    kind = "none" if payload is None else payload.kind
    if kind != expected:
        raise UpdateRejected(f"payload type {kind}, the task asked for {expected}")
    if payload is not None:
        try:
            check_payload(
                payload,
                layout.params.numel,
                layout.params.dtype,
                seed_pool=int(task.hyper.get(SEED_POOL, 0)),
                max_count=task.local_steps,
            )
        except PayloadError as error:
            raise UpdateRejected(str(error)) from None
        if policy.max_delta_norm and not isinstance(payload, SeedDelta):
            norm = payload.norm
            if norm > policy.max_delta_norm:
                raise UpdateRejected(f"delta norm {norm:.4g} above bound {policy.max_delta_norm}")
    buffers = update.buffers
    if buffers is not None and (
        buffers.shape != (layout.buffers.numel,) or not all_finite(buffers)
    ):
        raise UpdateRejected(f"buffers must be {layout.buffers.numel} finite values")
    if expected == "none":
        check_evaluation(update)


def check_evaluation(update: Update) -> None:
    """An evaluation reply carries a finite loss >= 0 and an accuracy in [0, 1]."""
    metrics = update.metrics
    for key in EVALUATION_METRICS:
        if key not in metrics or not math.isfinite(metrics[key]):
            raise UpdateRejected(f"evaluation reply needs a finite {key}")
    if metrics["eval_loss"] < 0 or not 0 <= metrics["eval_accuracy"] <= 1:
        raise UpdateRejected("evaluation reply: loss must be >= 0 and accuracy in [0, 1]")
