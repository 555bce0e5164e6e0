"""DP-SGD through Opacus: example-level differential privacy for a client's local training.

Each step samples a Poisson batch (every example in with probability q = batch_size / n, drawn
from the client's private generator, so the server that chose the task seed cannot tell which
examples a step used); each example's gradient is clipped to `max_grad_norm` with Opacus's
per-example rules (`clients/per_example.py`: ghost clipping by default, `ghost=0` forms
per-example gradients), Gaussian noise of std noise_multiplier * max_grad_norm from the same
private stream is added to their sum, and the sum is divided by the expected batch size, as
Opacus's optimizer does; fedcore's SGD step (`clients/sgd.py`, weight decay and momentum
included) applies it to the flat parameters. Recurrent layers train as Opacus's DP layers. The
training loss is withheld: it is not private.

Opacus is imported when a task runs (`pip install 'fedcore[privacy]'`), never on import: a
riscv64 client, which has no opacus, imports this module with the others.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from fedcore.clients.per_example import ClippedGradients
from fedcore.clients.registry import TaskError
from fedcore.clients.sgd import (
    SGDParams,
    begin,
    momentum_buffers,
    planned_steps,
    require_examples,
    sgd_step,
    trained_update,
)
from fedcore.clients.techniques.base import Technique, register
from fedcore.data.split import Split
from fedcore.records import Task, Update
from fedcore.typed_config import require, require_positive

if TYPE_CHECKING:
    from fedcore.clients.trainer import LocalTrainer

#: The private stream batch sampling and noise are drawn from (`LocalTrainer.private_generator`).
DPSGD_STREAM = 2


@dataclass(frozen=True)
class DPSGDParams(SGDParams):
    """Local SGD's settings (`batch_size` is the expected Poisson batch), the per-example clip
    bound C, the noise multiplier z (noise std z·C on the summed gradient) and the mode."""

    max_grad_norm: float = 1.0
    noise_multiplier: float = 1.0
    ghost: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive("max_grad_norm", self.max_grad_norm)
        require(
            self.noise_multiplier >= 0,
            "noise_multiplier",
            "must be >= 0 (0 only to compare with plain training)",
            self.noise_multiplier,
        )


def _require_opacus() -> None:
    """A TaskError saying how to get opacus, when this client lacks it."""
    try:
        import opacus  # noqa: F401
    except ImportError:
        raise TaskError(
            "task.technique: dpsgd needs opacus, which this client lacks: pip install "
            "'fedcore[privacy]' (a riscv64 client has none: use privacy.mode=local there)"
        ) from None


@register
class DPSGD(Technique[DPSGDParams]):
    """Poisson-sampled, per-example clipped, noised local SGD."""

    name = "dpsgd"
    params_type = DPSGDParams

    def run(
        self,
        trainer: LocalTrainer,
        task: Task,
        params: DPSGDParams,
        model: tuple[torch.Tensor, torch.Tensor],
        data: Split,
        reuse_model: bool,
    ) -> Update:
        """`local_steps` (or `epochs` of expected batches) DP-SGD steps from `model`."""
        require_examples(task, data)
        _require_opacus()
        started = time.perf_counter()
        bound = trainer.bound
        start = begin(bound, model)
        try:
            clipping = ClippedGradients(bound.module, params.max_grad_norm, params.ghost)
        except ValueError as error:
            raise TaskError(f"task.technique: dpsgd cannot train this model: {error}") from None
        try:
            steps = self._train(trainer, task, params, clipping, start, data)
        finally:
            clipping.close()
        return trained_update(task, bound, start, len(data), steps, started, {}, reuse_model)

    @staticmethod
    def _train(
        trainer: LocalTrainer,
        task: Task,
        params: DPSGDParams,
        clipping: ClippedGradients,
        start: torch.Tensor,
        data: Split,
    ) -> int:
        """The steps; how many were taken."""
        bound = trainer.bound
        generator = trainer.private_generator(task, DPSGD_STREAM)
        rate = min(1.0, params.batch_size / len(data))
        expected_batch = rate * len(data)
        std = params.noise_multiplier * params.max_grad_norm
        noise = torch.empty(bound.params.numel(), dtype=bound.params.dtype)
        moving = momentum_buffers(bound, params, trainer.velocity)
        device = bound.params.device
        steps = planned_steps(task.local_steps, params, len(data))
        bound.module.train()
        for _ in range(steps):
            chosen = (torch.rand(len(data), generator=generator) < rate).nonzero().flatten()
            x, y = data.batch(chosen)
            bound.fresh_grads()
            logits = bound.module(x.to(device))
            clipping.backward(nn.functional.cross_entropy(logits, y.to(device), reduction="none"))
            grads = bound.grads
            if std:
                grads.add_(noise.normal_(0.0, std, generator=generator).to(device))
            grads.div_(expected_batch)
            sgd_step(bound, params, moving, None, start)
        bound.fresh_grads()
        return steps

    def passes(self, task: Task, params: DPSGDParams, num_examples: int) -> float:
        """One pass per step (ghost clipping's second backward pass is not charged)."""
        return float(planned_steps(task.local_steps, params, num_examples))
