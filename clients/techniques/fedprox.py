"""FedProx's client half (Li et al., 2020): local SGD on the loss plus (mu/2)||w - w_global||^2."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from fedcore.clients.sgd import SGDParams, run_sgd
from fedcore.clients.techniques.base import register
from fedcore.clients.techniques.sgd import SGD
from fedcore.data.split import Split
from fedcore.records import Task, Update
from fedcore.typed_config import require

if TYPE_CHECKING:
    from fedcore.clients.trainer import LocalTrainer


@dataclass(frozen=True)
class ProxParams(SGDParams):
    """SGD parameters plus the proximal coefficient mu."""

    prox_mu: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.prox_mu >= 0, "prox_mu", "must be >= 0", self.prox_mu)


@register
class FedProxClient(SGD):
    """Each step's gradient gains mu (w - w_global), the proximal term's gradient."""

    name = "fedprox"
    params_type = ProxParams

    def run(
        self,
        trainer: LocalTrainer,
        task: Task,
        params: SGDParams,
        model: tuple[torch.Tensor, torch.Tensor],
        data: Split,
        reuse_model: bool,
    ) -> Update:
        """Local SGD with the proximal pull towards the received model."""
        assert isinstance(params, ProxParams)
        mu = params.prox_mu

        def proximal(grad: torch.Tensor, weights: torch.Tensor, start: torch.Tensor) -> None:
            if mu:
                grad.add_(weights - start, alpha=mu)

        return run_sgd(
            trainer.bound,
            trainer.velocity,
            task,
            params,
            model,
            data,
            reuse_model=reuse_model,
            adjust=proximal,
        )
