"""Plain local SGD (FedAvg's client half, and every strategy's default), and the base of every
technique that changes only the loss or the gradient of the shared loop (`clients/sgd.py`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from fedcore.clients.sgd import Adjust, Loss, SGDParams, cross_entropy, planned_steps, run_sgd
from fedcore.clients.techniques.base import Technique, register
from fedcore.data.split import Split
from fedcore.records import Task, Update

if TYPE_CHECKING:
    from fedcore.clients.trainer import LocalTrainer


@register
class SGD(Technique[SGDParams]):
    """`local_steps` (or `epochs`) minibatch SGD steps with optional momentum and weight decay.
    Subclasses change the loss (`loss`) or add to the gradient (`adjust`)."""

    name = "sgd"
    params_type = SGDParams

    def loss(self, params: SGDParams) -> Loss:
        """The training loss: cross-entropy."""
        return cross_entropy

    def adjust(self, params: SGDParams) -> Adjust | None:
        """A term added to each step's gradient: none."""
        return None

    def run(
        self,
        trainer: LocalTrainer,
        task: Task,
        params: SGDParams,
        model: tuple[torch.Tensor, torch.Tensor],
        data: Split,
        reuse_model: bool,
    ) -> Update:
        """The shared SGD loop with this technique's loss and gradient term."""
        return run_sgd(
            trainer.bound,
            trainer.velocity,
            task,
            params,
            model,
            data,
            reuse_model=reuse_model,
            loss=self.loss(params),
            adjust=self.adjust(params),
        )

    def passes(self, task: Task, params: SGDParams, num_examples: int) -> float:
        """One pass per step."""
        return float(planned_steps(task.local_steps, params, num_examples))
