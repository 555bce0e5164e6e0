"""A client technique added in one file, without touching fedcore: signSGD (Bernstein et al.,
2018), local steps w <- w - lr * sign(grad). Load it with `plugins=[tests.plugins.sign_sgd]`
and use it with `training.technique=sign_sgd`."""

from __future__ import annotations

import torch

from fedcore.clients.sgd import Adjust, SGDParams
from fedcore.clients.techniques.base import register
from fedcore.clients.techniques.sgd import SGD


def _sign(grad: torch.Tensor, weights: torch.Tensor, start: torch.Tensor) -> None:
    grad.sign_()


@register
class SignSGD(SGD):
    """Local steps along the sign of the minibatch gradient."""

    name = "sign_sgd"

    def adjust(self, params: SGDParams) -> Adjust | None:
        """Replace the gradient by its sign."""
        return _sign
