"""FedAsync (Xie, Koyejo and Gupta, 2019): every arrival is mixed into the model at once.

x_t = (1 - alpha_t) x_{t-1} + alpha_t x_client with alpha_t = alpha * s(t - tau), where
x_client = x_tau + delta is the client's trained model, built on the version tau it started from.
`clients_per_round` clients train concurrently; a returning client is replaced by a random idle one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedcore.config import TrainingConfig
from fedcore.records import Task
from fedcore.strategies.base import Arrival, Strategy
from fedcore.strategies.staleness import StalenessConfig, staleness_weight
from fedcore.typed_config import require


@dataclass
class FedAsyncConfig:
    """Concurrency, mixing rate alpha, staleness function and an optional staleness bound."""

    clients_per_round: int = 10
    #: Mixing weight of an arrival (times its staleness weight).
    alpha: float = 0.6
    #: Staleness weighting.
    staleness: StalenessConfig = field(default_factory=StalenessConfig)
    #: Updates staler than this are dropped (null: none are).
    max_staleness: int | None = None
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def __post_init__(self) -> None:
        require(
            self.clients_per_round >= 1, "clients_per_round", "must be >= 1", self.clients_per_round
        )
        require(0 < self.alpha <= 1, "alpha", "must be in (0, 1]", self.alpha)
        require(
            self.max_staleness is None or self.max_staleness >= 0,
            "max_staleness",
            "must be >= 0 or null",
            self.max_staleness,
        )


class FedAsync(Strategy):
    """Asynchronous mixing with staleness-weighted rates."""

    name = "fedasync"

    def __init__(self, config: FedAsyncConfig, seed: int) -> None:
        super().__init__(seed)
        self.config = config
        self.max_staleness = config.max_staleness
        self.active: set[int] = set()

    def on_start(self) -> None:
        """Fill every training slot (tasks lost in a restart are re-issued)."""
        self.active.clear()
        self._fill_slots()

    def on_client_idle(self, client_id: int) -> None:
        """A free client may take an empty slot."""
        self.active.discard(client_id)
        self._fill_slots()

    def on_task_lost(self, task: Task) -> None:
        """A lost task frees its slot."""
        self.active.discard(task.client_id)

    def mixing_rate(self, staleness: int) -> float:
        """alpha_t = alpha * s(staleness)."""
        return self.config.alpha * staleness_weight(staleness, self.config.staleness)

    def on_update(self, arrival: Arrival) -> None:
        """Mix the client's model into the global one and publish."""
        self.active.discard(arrival.update.client_id)
        rate = self.mixing_rate(arrival.staleness)
        model = self.ctx.model
        client_params = arrival.base.params + arrival.delta
        params = model.params * (1 - rate) + client_params * rate
        buffers = model.buffers
        if arrival.update.buffers is not None and buffers.numel():
            buffers = buffers * (1 - rate) + arrival.update.buffers * rate
        self.ctx.publish(params, buffers, staleness=arrival.staleness, mixing_rate=rate)

    def _fill_slots(self) -> None:
        idle = [c for c in self.ctx.idle_clients() if c not in self.active]
        free = self.config.clients_per_round - len(self.active)
        if free <= 0 or not idle:
            return
        chosen = self.rng.choice(idle, size=min(free, len(idle)), replace=False)
        for client in sorted(int(c) for c in chosen):
            self.active.add(client)
            self.ctx.dispatch(self.config.training.task(client, self.ctx.model.version, self.rng))
