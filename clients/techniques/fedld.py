"""FedLD's client half (Zeng et al., MICCAI 2024): local SGD on cross-entropy plus the
margin-control term `margin_lambda * log(1 + ||softmax(z)||^2)`, which penalises confident outputs.

By default the norm is the Frobenius norm of the whole [B, C] probability matrix, as the FedLD
reference codes it (so it grows with the batch size); `margin_per_sample` takes the mean over the
batch of the per-example term instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fedcore.clients.sgd import Loss, SGDParams
from fedcore.clients.techniques.base import register
from fedcore.clients.techniques.sgd import SGD
from fedcore.typed_config import require


@dataclass(frozen=True)
class MarginParams(SGDParams):
    """SGD parameters plus the margin term's weight and form."""

    margin_lambda: float = 0.0
    margin_per_sample: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.margin_lambda >= 0, "margin_lambda", "must be >= 0", self.margin_lambda)


def margin_loss(
    logits: torch.Tensor, labels: torch.Tensor, margin: float, per_sample: bool
) -> torch.Tensor:
    """Cross-entropy plus the margin-control term."""
    loss = nn.functional.cross_entropy(logits, labels)
    if not margin:
        return loss
    squared = torch.softmax(logits, dim=1).square().sum(dim=1)
    if per_sample:
        return loss + margin * torch.log1p(squared).mean()
    return loss + margin * torch.log1p(squared.sum())


@register
class FedLDClient(SGD):
    """Local SGD on the margin-controlled loss."""

    name = "fedld"
    params_type = MarginParams

    def loss(self, params: SGDParams) -> Loss:
        """Cross-entropy plus the margin term."""
        assert isinstance(params, MarginParams)

        def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return margin_loss(logits, labels, params.margin_lambda, params.margin_per_sample)

        return loss
