"""FedAvg (McMahan et al., 2017): the example-weighted mean of client deltas, folded as they arrive.

Server memory for aggregation is O(P): one running weighted sum, never the N updates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from fedcore.kernels import StreamingAccumulator
from fedcore.strategies.base import Arrival
from fedcore.strategies.rounds import RoundConfig, SynchronousRounds


@dataclass
class FedAvgConfig(RoundConfig):
    """FedAvg options: round shape plus how arrivals are weighted."""

    weighting: Literal["examples", "uniform"] = "examples"


class FedAvg(SynchronousRounds):
    """Synchronous FedAvg with a streaming weighted accumulator."""

    name = "fedavg"

    def __init__(self, config: FedAvgConfig, seed: int) -> None:
        super().__init__(config, seed)
        self.weighting = config.weighting
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
            self._deltas = StreamingAccumulator(arrival.delta.numel())
            self._buffers = StreamingAccumulator(self.ctx.layout.buffers.numel)
        self._deltas.add(arrival.delta, weight)
        if arrival.update.buffers is not None and self._buffers is not None:
            self._buffers.add(arrival.update.buffers, weight)

    def aggregate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The global model moved by the mean delta, through `server_step`."""
        if self._deltas is None:
            raise RuntimeError("aggregate called with no arrivals")
        model = self.ctx.model
        buffers = self._buffers
        if self._deltas.count == 0:
            raise RuntimeError("aggregate called with no arrivals")
        new_buffers = buffers.mean() if buffers is not None and buffers.count else model.buffers
        mean_delta = self._deltas.mean(in_place=True)
        params = self.server_step(model.params, mean_delta)
        if params is mean_delta:
            self._deltas.release()
        return params, new_buffers

    def server_step(self, params: torch.Tensor, mean_delta: torch.Tensor) -> torch.Tensor:
        """Plain FedAvg: w + mean delta, formed in place in `mean_delta` (the accumulator's
        storage, which then becomes the new model: no third model-sized tensor). Server
        optimizers override this and return a new tensor."""
        return mean_delta.add_(params)
