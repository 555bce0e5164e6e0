"""FedProx (Li et al., 2020): FedAvg whose clients add (mu/2)||w - w_global||^2 to their loss."""

from __future__ import annotations

from dataclasses import dataclass, replace

from fedcore.records import Task
from fedcore.strategies.fedavg import FedAvg, FedAvgConfig
from fedcore.typed_config import require


@dataclass
class FedProxConfig(FedAvgConfig):
    """FedAvg options plus the proximal coefficient mu."""

    #: Weight of the proximal term mu/2 ||w - w_t||^2.
    mu: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.mu >= 0, "mu", "must be >= 0", self.mu)


class FedProx(FedAvg):
    """Server side is FedAvg; the task tells clients to apply the proximal term."""

    name = "fedprox"
    own_techniques = ("fedprox",)

    def __init__(self, config: FedProxConfig, seed: int) -> None:
        super().__init__(config, seed)
        self.mu = config.mu

    def make_task(self, client_id: int, deadline: float | None) -> Task:
        """A FedAvg task for the `fedprox` client technique, carrying `prox_mu`."""
        task = super().make_task(client_id, deadline)
        return replace(task, technique="fedprox", hyper={**task.hyper, "prox_mu": self.mu})
