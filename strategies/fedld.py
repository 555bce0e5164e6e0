"""FedLD (Zeng et al., MICCAI 2024, arXiv 2408.12300): loss decomposition for heterogeneous FL.

Clients add the margin-control term `margin_lambda * log(1 + ||softmax(z)||^2)` to cross-entropy
(the task carries `margin_lambda` and `margin_per_sample`; see `fedcore.training.training_loss`).
The server revises each client's update per parameter tensor with the round's principal
directions (`fedcore.kernels.principal`) and moves the model by the uniform mean of the revised
updates. Differences from the reference code, on purpose:

- Principal aggregation applies to trainable parameters only; buffers take the example-weighted
  mean, as in FedAvg (the reference also projects BN statistics, pitfall F5).
- The mean over clients is uniform, as in the paper and the code (data sizes have no effect, F7).
- Principal aggregation runs from the first round. The reference averages plainly in its first
  round (history gate) and, through its lr = 0 warm-up bug (F2), in its second; `plain_rounds`
  reproduces that.
- k = max(1, floor(k_fraction * m)) for the m clients that actually returned, so partial
  participation and deadlines work (F3); m = 1 keeps the lone update unchanged.
- sign() replaces the division by the projection norm, so zero or orthogonal updates give no
  NaN (F6).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from fedcore.kernels import StreamingAccumulator
from fedcore.kernels.principal import principal_mean
from fedcore.records import Task
from fedcore.strategies.base import Arrival
from fedcore.strategies.rounds import RoundConfig, SynchronousRounds
from fedcore.strategies.server_step import ServerStep, ServerStepConfig
from fedcore.typed_config import require


@dataclass
class FedLDConfig(RoundConfig):
    """FedLD options; defaults from the reference `options.py` (margin 0.03; its README runs 0.1)."""

    #: Weight of the margin term log(1 + ||softmax(z)||^2).
    margin_lambda: float = 0.03
    #: Norm over the whole batch (reference) or per sample.
    margin_norm: Literal["batch", "sample"] = "batch"
    #: Principal directions kept: max(1, floor(k_fraction m)).
    k_fraction: float = 0.8
    #: First rounds aggregated as plain means.
    plain_rounds: int = 0
    #: Where the principal-direction kernel runs: auto, cpu or cuda.
    device: str = "auto"
    server_step: ServerStepConfig = field(default_factory=ServerStepConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.margin_lambda >= 0, "margin_lambda", "must be >= 0", self.margin_lambda)
        require(0 < self.k_fraction <= 1, "k_fraction", "must be in (0, 1]", self.k_fraction)
        require(self.plain_rounds >= 0, "plain_rounds", "must be >= 0", self.plain_rounds)
        require(
            self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda"),
            "device",
            "must be auto, cpu or cuda[:N]",
            self.device,
        )


class FedLD(SynchronousRounds):
    """Synchronous rounds; the round's updates are stacked ([m, P], in client-id order, so that
    arrival order cannot change a bit) for the principal revision."""

    name = "fedld"
    own_techniques = ("fedld",)
    config: FedLDConfig

    def __init__(self, config: FedLDConfig, seed: int) -> None:
        super().__init__(config, seed)
        self.step = ServerStep(config.server_step)
        self._deltas: dict[int, torch.Tensor] = {}
        self._buffers: StreamingAccumulator | None = None

    def make_task(self, client_id: int, deadline: float | None) -> Task:
        """A task for the `fedld` client technique, whose loss carries the margin term."""
        task = super().make_task(client_id, deadline)
        margin = {
            "margin_lambda": self.config.margin_lambda,
            "margin_per_sample": float(self.config.margin_norm == "sample"),
        }
        return replace(task, technique="fedld", hyper={**task.hyper, **margin})

    def reset_round(self) -> None:
        """Forget the round's updates (the buffer accumulator is reused)."""
        self._deltas = {}
        if self._buffers is not None:
            self._buffers.reset()

    def absorb(self, arrival: Arrival) -> None:
        """Keep the delta for stacking; fold the buffers into their example-weighted sum."""
        self._deltas[arrival.update.client_id] = arrival.delta
        if arrival.update.buffers is None:
            return
        if self._buffers is None:
            self._buffers = StreamingAccumulator(self.ctx.layout.buffers.numel)
        self._buffers.add(arrival.update.buffers, float(arrival.update.num_examples))

    def aggregate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The server step along the uniform mean of the principal-revised updates (the plain
        mean in `plain_rounds`); plain: w + that mean."""
        if not self._deltas:
            raise RuntimeError("aggregate called with no arrivals")
        model = self.ctx.model
        stacked = torch.stack([self._deltas[client] for client in sorted(self._deltas)])
        if self.round <= self.config.plain_rounds:
            step = stacked.mean(dim=0)
        else:
            bounds = [(s.offset, s.offset + s.numel) for s in self.ctx.layout.params.slots]
            step = principal_mean(stacked, bounds, self.config.k_fraction, self.config.device)
        buffers = self._buffers
        new_buffers = buffers.mean() if buffers is not None and buffers.count else model.buffers
        return self.step.apply(model.params, step, reuse=True), new_buffers

    def state_dict(self) -> dict[str, Any]:
        """Round state plus the server step's moments."""
        return {**super().state_dict(), "server_step": self.step.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore round state and the server step's moments."""
        super().load_state_dict(state)
        self.step.load_state_dict(state["server_step"])
