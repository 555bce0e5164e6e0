"""FedLAW (Li et al., ICML 2023, arXiv 2302.10911): learnable aggregation weights.

Each round the server learns a global shrinking factor gamma and relative client weights lambda
on a small class-balanced proxy set and publishes w = gamma * sum_i lambda_i w_i. Since
sum lambda = 1 and every cohort member started from the current model w, this is
gamma * (w + sum_i lambda_i delta_i), which is what is optimised (one GEMV per step).

- Parameterisations: `exp` (gamma = e^beta, lambda = softmax(theta)) as in the paper, or `quad`
  (gamma = beta^2, lambda_i = theta_i^2 / sum theta^2). Both start every round from FedAvg's
  weights (lambda = n_i / n, gamma = 1); `quad` therefore starts at theta_i = sqrt(n_i / n), not
  at the reference's uniform weights, so that zero server epochs is exactly FedAvg.
- Adam with betas (0.5, 0.999) for `server_epochs` passes over the proxy set, batches of
  `server_batch_size`, shuffled from a per-round seed derived from (run seed, round): client
  sampling draws the same cohorts as FedAvg.
- Guards against the collapse the authors report (pitfalls L4, L5): gamma is projected into
  [gamma_min, gamma_max] after every step, and with `select: best` the result is the iterate
  (checked after every epoch, FedAvg's starting point included) of lowest full proxy loss, so
  it is never worse than FedAvg on the proxy set.
- The proxy set is server-side data (`server_data` in the config): carved from the training set
  before partitioning, or loaded from a file; never the test set (pitfall L1).
- The model runs in eval mode on the proxy set; buffers take FedAvg's example-weighted mean (the
  reference updates BN statistics on the proxy set instead, pitfall L2).
- With partial participation only the returned cohort is weighted (the reference trains every
  client, pitfall L3).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from fedcore.data.split import Split
from fedcore.kernels import weighted_sum
from fedcore.strategies.base import Arrival, ServerResources
from fedcore.strategies.fedavg import FedAvg, FedAvgConfig
from fedcore.typed_config import ConfigError, require

#: Adam betas of the reference's server optimiser.
ADAM_BETAS = (0.5, 0.999)
#: Examples per forward pass when the whole proxy set's loss is measured.
EVAL_BATCH = 1024


@dataclass
class FedLAWConfig(FedAvgConfig):
    """FedLAW options; defaults from the reference `args.py` (server lr 0.005, 0.01 on CIFAR-10)."""

    #: Epochs of server-side learning per round on the proxy set (0: FedAvg).
    server_epochs: int = 20
    #: Adam learning rate of the server-side learning.
    server_lr: float = 0.005
    #: Proxy examples per server step.
    server_batch_size: int = 128
    #: Client weights as softmax (exp) or squares (quad).
    parameterization: Literal["exp", "quad"] = "exp"
    #: Lowest global shrinking factor.
    gamma_min: float = 0.5
    #: Highest global shrinking factor.
    gamma_max: float = 1.0
    #: Keep the lowest-proxy-loss iterate (best) or the last.
    select: Literal["best", "last"] = "best"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.server_epochs >= 0, "server_epochs", "must be >= 0", self.server_epochs)
        require(self.server_lr > 0, "server_lr", "must be > 0", self.server_lr)
        require(
            self.server_batch_size >= 1, "server_batch_size", "must be >= 1", self.server_batch_size
        )
        require(
            0 <= self.gamma_min <= 1,
            "gamma_min",
            "must be in [0, 1] (FedAvg's gamma = 1 must be allowed)",
            self.gamma_min,
        )
        require(
            self.gamma_max >= 1,
            "gamma_max",
            "must be >= 1 (FedAvg's gamma = 1 must be allowed)",
            self.gamma_max,
        )


@dataclass(frozen=True)
class Candidate:
    """One point (theta, beta) of the search with its full proxy loss."""

    theta: torch.Tensor
    beta: torch.Tensor
    loss: float = math.nan


class FedLAW(FedAvg):
    """FedAvg's round (its accumulators give the starting point) plus the learned weighting."""

    name = "fedlaw"
    config: FedLAWConfig

    def __init__(self, config: FedLAWConfig, seed: int) -> None:
        super().__init__(config, seed)
        self.seed = seed
        self._arrivals: dict[int, tuple[torch.Tensor, float]] = {}
        self._proxy: Split | None = None
        self._module: nn.Module | None = None
        self._info: dict[str, Any] = {}

    def bind_resources(self, resources: ServerResources) -> None:
        """Take the proxy set and a model instance to evaluate candidate weights with."""
        if resources.proxy is None or len(resources.proxy) == 0:
            raise ConfigError(
                "server_data.examples_per_class: fedlaw learns its aggregation weights on a "
                "server proxy set; set server_data.examples_per_class (e.g. 10) or server_data.path"
            )
        self._proxy = resources.proxy
        with torch.random.fork_rng(devices=[]):
            self._module = resources.build_model().eval()
        self._module.requires_grad_(False)

    def reset_round(self) -> None:
        """Forget the round's updates, as FedAvg empties its sums."""
        super().reset_round()
        self._arrivals = {}

    def absorb(self, arrival: Arrival) -> None:
        """FedAvg's fold, and the delta kept for learning its weight."""
        super().absorb(arrival)
        self._arrivals[arrival.update.client_id] = (arrival.delta, self.weight_of(arrival))

    def aggregate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """FedAvg's model when nothing beats it on the proxy set, else gamma * sum lambda_i w_i."""
        fedavg, buffers = super().aggregate()
        clients = sorted(self._arrivals)
        shares = torch.tensor([self._arrivals[c][1] for c in clients], dtype=torch.float64)
        theta, beta = self._initial((shares / shares.sum()).float())
        if self.config.server_epochs == 0:
            self._info = self._describe(Candidate(theta, beta))
            return fedavg, buffers
        stacked = torch.stack([self._arrivals[c][0] for c in clients])
        params = self.ctx.model.params
        start = Candidate(theta, beta, self._proxy_loss(fedavg, buffers))
        chosen = self._learn(start, stacked, params, buffers)
        self._info = self._describe(chosen, start.loss)
        if chosen is start:
            return fedavg, buffers
        return self._combine(chosen.theta, chosen.beta, stacked, params).detach(), buffers

    def round_info(self) -> dict[str, Any]:
        """gamma, the clients' lambda (JSON, by client id) and the proxy losses of the round."""
        return self._info

    def _initial(self, shares: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """FedAvg's point (theta, beta): lambda = shares, gamma = 1."""
        if self.config.parameterization == "exp":
            return shares.log(), torch.zeros(())
        return shares.sqrt(), torch.ones(())

    def _gamma_lambda(
        self, theta: torch.Tensor, beta: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The parameterisation: (gamma, lambda) from (theta, beta)."""
        if self.config.parameterization == "exp":
            return beta.exp(), torch.softmax(theta, dim=0)
        squares = theta.square()
        return beta.square(), squares / squares.sum()

    def _beta_bounds(self) -> tuple[float, float]:
        """The interval of beta that keeps gamma in [gamma_min, gamma_max]."""
        low, high = self.config.gamma_min, self.config.gamma_max
        if self.config.parameterization == "exp":
            return (math.log(low) if low > 0 else -math.inf), math.log(high)
        return math.sqrt(low), math.sqrt(high)

    def _combine(
        self, theta: torch.Tensor, beta: torch.Tensor, stacked: torch.Tensor, params: torch.Tensor
    ) -> torch.Tensor:
        """gamma * (w + sum_i lambda_i delta_i), differentiable in theta and beta."""
        gamma, lam = self._gamma_lambda(theta, beta)
        return gamma * (params + weighted_sum(stacked, lam))

    def _learn(
        self,
        start: Candidate,
        stacked: torch.Tensor,
        params: torch.Tensor,
        buffers: torch.Tensor,
    ) -> Candidate:
        """Adam over (theta, beta) on the proxy set from `start`; the best (or last) iterate."""
        proxy = self._bound_proxy()
        theta = start.theta.clone().requires_grad_(True)
        beta = start.beta.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([theta, beta], lr=self.config.server_lr, betas=ADAM_BETAS)
        low, high = self._beta_bounds()
        seed = int(np.random.SeedSequence([self.seed, self.round]).generate_state(1)[0])
        generator = torch.Generator().manual_seed(seed)
        best = start
        for _ in range(self.config.server_epochs):
            order = torch.randperm(len(proxy), generator=generator)
            for batch in order.split(self.config.server_batch_size):
                x, y = proxy.batch(batch)
                candidate = self._combine(theta, beta, stacked, params)
                loss = nn.functional.cross_entropy(self._forward(candidate, buffers, x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    beta.clamp_(low, high)
            if self.config.select == "best":
                measured = self._measured(theta, beta, stacked, params, buffers)
                best = min(best, measured, key=lambda c: c.loss)
        if self.config.select == "last":
            return self._measured(theta, beta, stacked, params, buffers)
        return best

    def _measured(
        self,
        theta: torch.Tensor,
        beta: torch.Tensor,
        stacked: torch.Tensor,
        params: torch.Tensor,
        buffers: torch.Tensor,
    ) -> Candidate:
        """A copy of (theta, beta) with the full proxy loss of the model it gives."""
        with torch.no_grad():
            loss = self._proxy_loss(self._combine(theta, beta, stacked, params), buffers)
        return Candidate(theta.detach().clone(), beta.detach().clone(), loss)

    def _bound_proxy(self) -> Split:
        """The proxy set; an error if the strategy was never given one."""
        if self._proxy is None:
            raise RuntimeError("fedlaw has no proxy set: bind_resources was not called")
        return self._proxy

    def _forward(
        self, params: torch.Tensor, buffers: torch.Tensor, x: torch.Tensor
    ) -> torch.Tensor:
        """The model's outputs with flat (params, buffers) substituted functionally."""
        assert self._module is not None
        layout = self.ctx.layout
        tensors = {**layout.params.unflatten(params), **layout.buffers.unflatten(buffers)}
        return torch.func.functional_call(self._module, tensors, (x,))

    @torch.no_grad()
    def _proxy_loss(self, params: torch.Tensor, buffers: torch.Tensor) -> float:
        """Mean cross-entropy of (params, buffers) over the whole proxy set."""
        proxy = self._bound_proxy()
        total = torch.zeros((), dtype=torch.float64)
        for batch in torch.arange(len(proxy)).split(EVAL_BATCH):
            x, y = proxy.batch(batch)
            logits = self._forward(params, buffers, x)
            total += nn.functional.cross_entropy(logits, y, reduction="sum").double()
        return float(total) / len(proxy)

    def _describe(self, chosen: Candidate, fedavg_loss: float | None = None) -> dict[str, Any]:
        """What is published with the model: gamma, lambda by client and the proxy losses."""
        with torch.no_grad():
            gamma, lam = self._gamma_lambda(chosen.theta, chosen.beta)
        info: dict[str, Any] = {
            "gamma": float(gamma),
            "lambdas": json.dumps(
                {
                    str(c): round(float(w), 6)
                    for c, w in zip(sorted(self._arrivals), lam, strict=True)
                }
            ),
        }
        if fedavg_loss is not None:
            info["proxy_loss_fedavg"] = fedavg_loss
            info["proxy_loss"] = chosen.loss
        return info
