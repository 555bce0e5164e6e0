"""FedAvg (McMahan et al., 2017): the example-weighted mean of client deltas, folded as they
arrive, applied by the configured server step (`server_step.py`). FedAvgM, FedAdam, FedYogi and
FedAdagrad (Reddi et al., 2021) are FedAvg with the momentum, adam, yogi and adagrad steps.

Server memory for aggregation is O(P): one running weighted sum, never the N updates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from fedcore.kernels import StreamingAccumulator
from fedcore.strategies.base import Arrival
from fedcore.strategies.rounds import RoundConfig, SynchronousRounds
from fedcore.strategies.server_step import ServerStep, ServerStepConfig


@dataclass
class FedAvgConfig(RoundConfig):
    """FedAvg options: round shape, how arrivals are weighted, and the server step."""

    #: Mean weighted by clients' example counts, or uniform.
    weighting: Literal["examples", "uniform"] = "examples"
    #: How the mean delta moves the model (docs/client-techniques.md).
    server_step: ServerStepConfig = field(default_factory=ServerStepConfig)


@dataclass
class FedAvgMConfig(FedAvgConfig):
    """FedAvg with server momentum (lr 1, momentum 0.9)."""

    server_step: ServerStepConfig = field(
        default_factory=lambda: ServerStepConfig(name="momentum", lr=1.0)
    )


@dataclass
class FedAdamConfig(FedAvgConfig):
    """FedAvg with server Adam (lr 0.01, beta1 0.9, beta2 0.99, tau 1e-3)."""

    server_step: ServerStepConfig = field(
        default_factory=lambda: ServerStepConfig(name="adam", lr=0.01)
    )


@dataclass
class FedYogiConfig(FedAvgConfig):
    """FedAvg with server Yogi (lr 0.01)."""

    server_step: ServerStepConfig = field(
        default_factory=lambda: ServerStepConfig(name="yogi", lr=0.01)
    )


@dataclass
class FedAdagradConfig(FedAvgConfig):
    """FedAvg with server Adagrad (lr 0.01)."""

    server_step: ServerStepConfig = field(
        default_factory=lambda: ServerStepConfig(name="adagrad", lr=0.01)
    )


class FedAvg(SynchronousRounds):
    """Synchronous FedAvg with a streaming weighted accumulator."""

    name = "fedavg"
    config: FedAvgConfig

    def __init__(self, config: FedAvgConfig, seed: int) -> None:
        super().__init__(config, seed)
        self.weighting = config.weighting
        self.step = ServerStep(config.server_step)
        self._deltas: StreamingAccumulator | None = None
        self._buffers: StreamingAccumulator | None = None

    def reset_round(self) -> None:
        """Empty the accumulators, kept across rounds (allocated on the first arrival)."""
        if self._deltas is not None and self._buffers is not None:
            self._deltas.reset()
            self._buffers.reset()

    def weight_of(self, arrival: Arrival) -> float:
        """An arrival's aggregation weight."""
        return float(arrival.update.num_examples) if self.weighting == "examples" else 1.0

    def absorb(self, arrival: Arrival) -> None:
        """Fold the arrival's delta (and buffers) into the running sums."""
        weight = self.weight_of(arrival)
        if self._deltas is None:
            self._deltas = StreamingAccumulator(self.ctx.layout.params.numel)
            self._buffers = StreamingAccumulator(self.ctx.layout.buffers.numel)
        arrival.fold_into(self._deltas, weight)
        if arrival.update.buffers is not None and self._buffers is not None:
            self._buffers.add(arrival.update.buffers, weight)

    def aggregate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The global model moved by the mean delta, through the server step."""
        if self._deltas is None:
            raise RuntimeError("aggregate called with no arrivals")
        model = self.ctx.model
        buffers = self._buffers
        if self._deltas.count == 0:
            raise RuntimeError("aggregate called with no arrivals")
        new_buffers = buffers.mean() if buffers is not None and buffers.count else model.buffers
        mean_delta = self._deltas.mean(in_place=True)
        params = self.step.apply(model.params, mean_delta, reuse=True)
        if params is mean_delta:
            self._deltas.release()
        return params, new_buffers

    def state_dict(self) -> dict[str, Any]:
        """Round state plus the server step's moments."""
        return {**super().state_dict(), "server_step": self.step.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore round state and the server step's moments."""
        super().load_state_dict(state)
        self.step.load_state_dict(state["server_step"])
