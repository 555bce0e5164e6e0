"""FedProx's client half (Li et al., 2020): local SGD on the loss plus (mu/2)||w - w_global||^2."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedcore.clients.sgd import Adjust, SGDParams
from fedcore.clients.techniques.base import register
from fedcore.clients.techniques.sgd import SGD
from fedcore.typed_config import require


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

    def adjust(self, params: SGDParams) -> Adjust | None:
        """The proximal pull towards the received model (none with mu = 0)."""
        assert isinstance(params, ProxParams)
        mu = params.prox_mu

        def proximal(grad: torch.Tensor, weights: torch.Tensor, start: torch.Tensor) -> None:
            grad.add_(weights - start, alpha=mu)

        return proximal if mu else None
