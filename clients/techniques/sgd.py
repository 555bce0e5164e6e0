"""Plain local SGD (FedAvg's client half, and every strategy's default)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from fedcore.clients.sgd import SGDParams, planned_steps, run_sgd
from fedcore.clients.techniques.base import Technique, register
from fedcore.data.split import Split
from fedcore.records import Task, Update

if TYPE_CHECKING:
    from fedcore.clients.trainer import LocalTrainer


@register
class SGD(Technique[SGDParams]):
    """`local_steps` (or `epochs`) minibatch SGD steps with optional momentum and weight decay."""

    name = "sgd"
    params_type = SGDParams

    def run(
        self,
        trainer: LocalTrainer,
        task: Task,
        params: SGDParams,
        model: tuple[torch.Tensor, torch.Tensor],
        data: Split,
        reuse_model: bool,
    ) -> Update:
        """Local SGD with cross-entropy."""
        return run_sgd(
            trainer.bound, trainer.velocity, task, params, model, data, reuse_model=reuse_model
        )

    def passes(self, task: Task, params: SGDParams, num_examples: int) -> float:
        """One pass per step."""
        return float(planned_steps(task.local_steps, params, num_examples))
