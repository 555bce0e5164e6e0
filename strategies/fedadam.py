"""FedAdam (Reddi et al., 2021, Adaptive Federated Optimization): server Adam over the mean delta.

Algorithm 2 of the paper: no bias correction; tau bounds the adaptivity. Moments are checkpointed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fedcore.strategies.fedavg import FedAvg, FedAvgConfig
from fedcore.typed_config import require


@dataclass
class FedAdamConfig(FedAvgConfig):
    """Server Adam as in Reddi et al. Algorithm 2 (no bias correction; tau bounds adaptivity)."""

    server_lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.server_lr > 0, "server_lr", "must be > 0", self.server_lr)
        require(0 <= self.beta1 < 1, "beta1", "must be in [0, 1)", self.beta1)
        require(0 <= self.beta2 < 1, "beta2", "must be in [0, 1)", self.beta2)
        require(self.tau > 0, "tau", "must be > 0", self.tau)


class FedAdam(FedAvg):
    """m <- b1 m + (1-b1) d; v <- b2 v + (1-b2) d^2; w <- w + eta m / (sqrt(v) + tau)."""

    name = "fedadam"

    def __init__(self, config: FedAdamConfig, seed: int) -> None:
        super().__init__(config, seed)
        self.opt = config
        self.m: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def server_step(self, params: torch.Tensor, mean_delta: torch.Tensor) -> torch.Tensor:
        """One Adam step along the mean delta."""
        if self.m is None or self.v is None:
            self.m = torch.zeros_like(params)
            self.v = torch.zeros_like(params)
        self.m.mul_(self.opt.beta1).add_(mean_delta, alpha=1 - self.opt.beta1)
        self.v.mul_(self.opt.beta2).addcmul_(mean_delta, mean_delta, value=1 - self.opt.beta2)
        return params + self.opt.server_lr * self.m / (self.v.sqrt() + self.opt.tau)

    def state_dict(self) -> dict[str, Any]:
        """Round state plus both moments."""
        return {**super().state_dict(), "m": self.m, "v": self.v}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore round state and moments."""
        super().load_state_dict(state)
        self.m, self.v = state["m"], state["v"]
