"""Server steps: how a policy's aggregate pseudo-gradient Delta moves the global model.

A policy (synchronous rounds, FedBuff's buffer, FedCompass's groups, FedLD's revision) decides
when and with what weights; the server step it is configured with (`strategy.server_step`)
applies Delta. Adaptive Federated Optimization (Reddi et al., ICLR 2021, Algorithm 2) with no
bias correction, moments starting at zero, and tau bounding the adaptivity:

- plain:    w <- w + lr * Delta
- momentum: v <- momentum * v + Delta;  w <- w + lr * v  (FedAvgM, Hsu et al. 2019)
- adam:     m <- b1 m + (1 - b1) Delta;  v <- b2 v + (1 - b2) Delta^2
- yogi:     m as adam;  v <- v - (1 - b2) Delta^2 sign(v - Delta^2)
- adagrad:  m as adam;  v <- v + Delta^2
  (adaptive steps: w <- w + lr * m / (sqrt(v) + tau))

The step's tensors are strategy state: checkpointed with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from fedcore.typed_config import require, require_positive

StepName = Literal["plain", "momentum", "adam", "yogi", "adagrad"]


@dataclass
class ServerStepConfig:
    """Which server step, and its parameters (each step reads the ones it needs)."""

    #: plain, momentum, adam, yogi or adagrad.
    name: StepName = "plain"
    #: Server learning rate.
    lr: float = 1.0
    #: Momentum of the momentum step.
    momentum: float = 0.9
    #: First-moment decay of adam and yogi.
    beta1: float = 0.9
    #: Second-moment decay of adam and yogi.
    beta2: float = 0.99
    #: Adaptivity epsilon of adam, yogi and adagrad.
    tau: float = 1e-3

    def __post_init__(self) -> None:
        require_positive("lr", self.lr)
        require(0 <= self.momentum < 1, "momentum", "must be in [0, 1)", self.momentum)
        require(0 <= self.beta1 < 1, "beta1", "must be in [0, 1)", self.beta1)
        require(0 <= self.beta2 < 1, "beta2", "must be in [0, 1)", self.beta2)
        require(math.isfinite(self.tau) and self.tau > 0, "tau", "must be > 0", self.tau)


class ServerStep:
    """Applies one configured step; keeps its moments between calls."""

    def __init__(self, config: ServerStepConfig) -> None:
        self.config = config
        self.m: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def apply(self, params: torch.Tensor, delta: torch.Tensor, reuse: bool = False) -> torch.Tensor:
        """The next model from `params` and the pseudo-gradient `delta`. `reuse` lets the plain
        step form the result in `delta`'s storage (no third model-sized tensor)."""
        config = self.config
        if config.name == "plain":
            if config.lr != 1.0:
                delta = delta * config.lr if not reuse else delta.mul_(config.lr)
            return delta.add_(params) if reuse else params + delta
        if self.m is None:
            self.m = torch.zeros_like(params)
        if config.name == "momentum":
            self.m.mul_(config.momentum).add_(delta)
            return params + config.lr * self.m
        if self.v is None:
            self.v = torch.zeros_like(params)
        self.m.mul_(config.beta1).add_(delta, alpha=1 - config.beta1)
        if config.name == "adam":
            self.v.mul_(config.beta2).addcmul_(delta, delta, value=1 - config.beta2)
        elif config.name == "yogi":
            squared = delta * delta
            self.v.sub_(torch.sign(self.v - squared) * squared, alpha=1 - config.beta2)
        else:
            self.v.addcmul_(delta, delta)
        return params + config.lr * self.m / (self.v.sqrt() + config.tau)

    def state_dict(self) -> dict[str, Any]:
        """The moments (None before the first step)."""
        return {"m": self.m, "v": self.v}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        self.m, self.v = state["m"], state["v"]
