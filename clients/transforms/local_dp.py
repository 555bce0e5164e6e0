"""Local differential privacy on updates: clip the delta to L2 norm C, then add Gaussian noise of
std z·2C, where 2C bounds how far two clipped deltas lie apart (replace-one neighbours: any other
update the client could have sent). Each upload is then a Gaussian release of noise multiplier
z, whatever the server does with it (`fedcore/privacy.py` composes the releases; docs/privacy.md).

The noise comes from the context's private generator, never from the task's seed. The delta is
all that is protected: the example count, the timing and any buffers are not, so a model with
buffers is refused and the update's metrics (its training loss) are withheld. Pure torch: a
riscv64 client has it too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from fedcore.clients.transforms.base import (
    TransformContext,
    UpdateTransform,
    register_transform,
)
from fedcore.clients.transforms.clip import clipped
from fedcore.payloads import DenseDelta
from fedcore.records import Update
from fedcore.typed_config import require_positive


@dataclass(frozen=True)
class LocalDPOptions:
    """The clipping bound C and the noise multiplier z (noise std over the sensitivity 2C)."""

    max_norm: float = 1.0
    noise_multiplier: float = 1.0

    def __post_init__(self) -> None:
        require_positive("max_norm", self.max_norm)
        require_positive("noise_multiplier", self.noise_multiplier, " (no noise is no privacy)")

    @property
    def sigma(self) -> float:
        """The noise std: z times the sensitivity 2C."""
        return self.noise_multiplier * 2.0 * self.max_norm


@register_transform
class LocalDP(UpdateTransform[LocalDPOptions]):
    """delta <- clip(delta, C) + N(0, (2zC)^2 I); dense in, dense out, bytes unchanged."""

    name = "ldp"
    options_type = LocalDPOptions
    accepts = ("dense",)

    def tighten(self, task: LocalDPOptions, own: LocalDPOptions) -> LocalDPOptions:
        """The smaller bound and the larger multiplier: never less private than either asks."""
        return LocalDPOptions(
            min(task.max_norm, own.max_norm), max(task.noise_multiplier, own.noise_multiplier)
        )

    def apply(self, update: Update, options: LocalDPOptions, context: TransformContext) -> Update:
        """The clipped, noised delta, without the update's metrics."""
        payload = update.payload
        if not isinstance(payload, DenseDelta):
            raise TypeError(f"ldp takes a dense payload, not {type(payload).__name__}")
        if update.buffers is not None and update.buffers.numel():
            raise TypeError(
                "ldp cannot protect a model's buffers (BatchNorm statistics), which travel "
                "unnoised: use a model without buffers"
            )
        values = clipped(payload.values, options.max_norm)
        noised = torch.randn(
            values.shape, generator=context.private_generator(), dtype=values.dtype
        )
        noised.mul_(options.sigma).add_(values.cpu())
        return dataclasses.replace(
            update,
            payload=dataclasses.replace(payload, values=noised.to(values.device)),
            metrics={},
        )
