"""DP-SGD through Opacus: example-level differential privacy for a client's local training.

Each step samples a Poisson batch (every example in with probability q = batch_size / n, drawn
from the client's private generator, so the server that chose the task seed cannot tell which
examples a step used); Opacus bounds each example's gradient to `max_grad_norm` and adds
Gaussian noise of std noise_multiplier * max_grad_norm to their sum, divided by the expected
batch size; fedcore's SGD step (`clients/sgd.py`, weight decay and momentum included) applies it
to the flat parameters. Ghost clipping (Opacus's fast gradient clipping: norms without
per-example gradients, then a reweighted backward pass) is the default; `ghost=0` keeps
per-example gradients (Opacus's hooks). The training loss is withheld: it is not private.

Opacus is imported when a task runs (`pip install 'fedcore[privacy]'`), never on import: a
riscv64 client, which has no opacus, imports this module with the others.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

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
from fedcore.params import BoundModule
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


def opacus() -> ModuleType:
    """The opacus package, or a TaskError saying how to get it."""
    try:
        import opacus as package
    except ImportError:
        raise TaskError(
            "task.technique: dpsgd needs opacus, which this client lacks: pip install "
            "'fedcore[privacy]' (a riscv64 client has none: use privacy.mode=local there)"
        ) from None
    return package


class _Private:
    """The task's module wrapped by Opacus for its mode and clip bound; `close` unwraps it, so
    no hook outlives the task (the same module then trains or evaluates plainly)."""

    def __init__(self, bound: BoundModule, params: DPSGDParams) -> None:
        grad_sample = opacus().grad_sample
        if params.ghost:
            self.module: Any = grad_sample.GradSampleModuleFastGradientClipping(
                bound.module,
                batch_first=True,
                loss_reduction="mean",
                max_grad_norm=params.max_grad_norm,
                use_ghost_clipping=True,
            )
        else:
            self.module = grad_sample.GradSampleModule(
                bound.module, batch_first=True, loss_reduction="mean"
            )

    def close(self) -> None:
        """Remove Opacus's hooks from the module."""
        self.module._close()

    def optimizer(self, bound: BoundModule, params: DPSGDParams, batch: float, noise: Any) -> Any:
        """Opacus's optimizer over the bound parameters: only its clipping and noise are used
        (`pre_step`); fedcore's step moves the weights."""
        optimizers = opacus().optimizers
        kind = (
            optimizers.DPOptimizerFastGradientClipping if params.ghost else optimizers.DPOptimizer
        )
        return kind(
            torch.optim.SGD(bound.module.parameters(), lr=params.lr),
            noise_multiplier=params.noise_multiplier,
            max_grad_norm=params.max_grad_norm,
            expected_batch_size=batch,
            loss_reduction="mean",
            generator=noise,
        )

    def criterion(self, params: DPSGDParams, optimizer: Any) -> Any:
        """The loss: ghost clipping's wraps cross-entropy to run its two backward passes."""
        if not params.ghost:
            return nn.CrossEntropyLoss()
        from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

        return DPLossFastGradientClipping(self.module, optimizer, nn.CrossEntropyLoss(), "mean")


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
        started = time.perf_counter()
        bound = trainer.bound
        start = begin(bound, model)
        private = _Private(bound, params)
        try:
            steps = self._train(trainer, task, params, private, start, data)
        finally:
            private.close()
        return trained_update(task, bound, start, len(data), steps, started, {}, reuse_model)

    @staticmethod
    def _train(
        trainer: LocalTrainer,
        task: Task,
        params: DPSGDParams,
        private: _Private,
        start: torch.Tensor,
        data: Split,
    ) -> int:
        """The steps; how many were taken."""
        bound = trainer.bound
        generator = trainer.private_generator(task, DPSGD_STREAM)
        rate = min(1.0, params.batch_size / len(data))
        optimizer = private.optimizer(bound, params, rate * len(data), generator)
        criterion = private.criterion(params, optimizer)
        moving = momentum_buffers(bound, params, trainer.velocity)
        device = bound.params.device
        steps = planned_steps(task.local_steps, params, len(data))
        bound.module.train()
        with warnings.catch_warnings():
            # Opacus's hooks see inputs that need no gradient (the data): torch says so.
            warnings.filterwarnings("ignore", "Full backward hook is firing", UserWarning)
            for _ in range(steps):
                chosen = (torch.rand(len(data), generator=generator) < rate).nonzero().flatten()
                x, y = data.batch(chosen)
                optimizer.zero_grad(set_to_none=True)
                criterion(private.module(x.to(device)), y.to(device)).backward()
                optimizer.pre_step()
                sgd_step(bound, params, moving, None, start)
        optimizer.zero_grad(set_to_none=True)
        return steps

    def passes(self, task: Task, params: DPSGDParams, num_examples: int) -> float:
        """One pass per step (ghost clipping's second backward pass is not charged)."""
        return float(planned_steps(task.local_steps, params, num_examples))
