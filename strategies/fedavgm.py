"""FedAvgM (Hsu et al., 2019): server SGD with momentum over the mean client delta.

The mean delta is a pseudo-gradient; the velocity is part of the checkpointed state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fedcore.strategies.fedavg import FedAvg, FedAvgConfig
from fedcore.typed_config import require


@dataclass
class FedAvgMConfig(FedAvgConfig):
    """FedAvg options plus server learning rate and momentum."""

    server_lr: float = 1.0
    server_momentum: float = 0.9

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.server_lr > 0, "server_lr", "must be > 0", self.server_lr)
        require(
            0 <= self.server_momentum < 1,
            "server_momentum",
            "must be in [0, 1)",
            self.server_momentum,
        )


class FedAvgM(FedAvg):
    """v <- beta v + mean delta; w <- w + eta v."""

    name = "fedavgm"

    def __init__(self, config: FedAvgMConfig, seed: int) -> None:
        super().__init__(config, seed)
        self.server_lr = config.server_lr
        self.momentum = config.server_momentum
        self.velocity: torch.Tensor | None = None

    def server_step(self, params: torch.Tensor, mean_delta: torch.Tensor) -> torch.Tensor:
        """One momentum step along the mean delta."""
        if self.velocity is None:
            self.velocity = torch.zeros_like(params)
        self.velocity.mul_(self.momentum).add_(mean_delta)
        return params + self.server_lr * self.velocity

    def state_dict(self) -> dict[str, Any]:
        """Round state plus the velocity."""
        return {**super().state_dict(), "velocity": self.velocity}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore round state and velocity."""
        super().load_state_dict(state)
        self.velocity = state["velocity"]
