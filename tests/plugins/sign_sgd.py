"""A client technique added in one file, without touching fedcore: signSGD (Bernstein et al.,
2018), local steps w <- w - lr * sign(grad). Load it with `plugins=[tests.plugins.sign_sgd]`
and use it with `training.technique=sign_sgd`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from fedcore.clients.sgd import SGDParams, run_sgd
from fedcore.clients.techniques.base import register
from fedcore.clients.techniques.sgd import SGD
from fedcore.data.split import Split
from fedcore.records import Task, Update

if TYPE_CHECKING:
    from fedcore.clients.trainer import LocalTrainer


def _sign(grad: torch.Tensor, weights: torch.Tensor, start: torch.Tensor) -> None:
    grad.sign_()


@register
class SignSGD(SGD):
    """Local steps along the sign of the minibatch gradient."""

    name = "sign_sgd"

    def run(
        self,
        trainer: LocalTrainer,
        task: Task,
        params: SGDParams,
        model: tuple[torch.Tensor, torch.Tensor],
        data: Split,
        reuse_model: bool,
    ) -> Update:
        """The shared SGD loop with the gradient replaced by its sign."""
        return run_sgd(
            trainer.bound,
            trainer.velocity,
            task,
            params,
            model,
            data,
            reuse_model=reuse_model,
            adjust=_sign,
        )
