"""FedBuff (Nguyen et al., AISTATS 2022): asynchronous training with buffered aggregation.

`clients_per_round` clients train concurrently (slots filled as in FedAsync); each arriving delta
is folded into a buffer with weight s(tau), and every `buffer_size` arrivals the server applies
Delta = alpha * (1/K) * sum_k s(tau_k) delta_k through its server step (`server_step.py`; plain:
w <- w + Delta) and publishes. The model changes only at a flush,
so an update's staleness at arrival is its staleness at aggregation. Buffers (e.g. batch-norm
statistics) become the s-weighted mean of the buffered clients'.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedcore.kernels import StreamingAccumulator
from fedcore.strategies.base import Arrival
from fedcore.strategies.fedasync import FedAsync, FedAsyncConfig
from fedcore.strategies.server_step import ServerStep, ServerStepConfig
from fedcore.strategies.staleness import staleness_weight
from fedcore.typed_config import require


@dataclass
class FedBuffConfig(FedAsyncConfig):
    """FedAsync's concurrency and staleness options, plus the buffer size K; `alpha` is the
    server step size eta_g."""

    alpha: float = 1.0
    #: Arrivals per published version.
    buffer_size: int = 4
    server_step: ServerStepConfig = field(default_factory=ServerStepConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.buffer_size >= 1, "buffer_size", "must be >= 1", self.buffer_size)


class FedBuff(FedAsync):
    """Buffered asynchronous aggregation: one model version per `buffer_size` arrivals."""

    name = "fedbuff"

    def __init__(self, config: FedBuffConfig, seed: int) -> None:
        super().__init__(config, seed)
        self.buffer_size = config.buffer_size
        self.step = ServerStep(config.server_step)
        self._deltas: StreamingAccumulator | None = None
        self._buffers: StreamingAccumulator | None = None

    def _accumulators(self) -> tuple[StreamingAccumulator, StreamingAccumulator]:
        """The running sums, allocated once to the model's sizes."""
        if self._deltas is None or self._buffers is None:
            layout = self.ctx.layout
            self._deltas = StreamingAccumulator(layout.params.numel, dtype=layout.params.dtype)
            self._buffers = StreamingAccumulator(layout.buffers.numel, dtype=layout.buffers.dtype)
        return self._deltas, self._buffers

    def on_update(self, arrival: Arrival) -> None:
        """Fold the arrival in with weight s(tau); flush when the buffer holds K updates."""
        self.active.discard(arrival.update.client_id)
        deltas, buffers = self._accumulators()
        weight = staleness_weight(arrival.staleness, self.config.staleness)
        arrival.fold_into(deltas, weight)
        if arrival.update.buffers is not None and buffers.sum.numel():
            buffers.add(arrival.update.buffers, weight)
        if deltas.count < self.buffer_size:
            return
        model = self.ctx.model
        pseudo_gradient = deltas.sum * (self.config.alpha / deltas.count)
        params = self.step.apply(model.params, pseudo_gradient, reuse=True)
        new_buffers = buffers.mean() if buffers.count else model.buffers
        updates = deltas.count
        deltas.reset()
        buffers.reset()
        self.ctx.publish(params, new_buffers, updates=updates)

    def state_dict(self) -> dict[str, Any]:
        """The partially filled buffer: sums (tensors), total weights and counts."""
        deltas, buffers = self._accumulators()
        return {
            **super().state_dict(),
            "buffer": [
                {"sum": acc.sum.clone(), "weight": acc.weight, "count": acc.count}
                for acc in (deltas, buffers)
            ],
            "server_step": self.step.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the partially filled buffer."""
        super().load_state_dict(state)
        self.step.load_state_dict(state["server_step"])
        for acc, saved in zip(self._accumulators(), state["buffer"], strict=True):
            acc.sum.copy_(saved["sum"])
            acc.weight = float(saved["weight"])
            acc.count = int(saved["count"])
