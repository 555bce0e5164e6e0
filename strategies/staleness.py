"""Staleness weights s(tau): how much an update computed on a model tau versions old still counts.

All are non-increasing in tau (the FedCompass reference code's polynomial had the wrong sign,
(tau+1)^(+a); this is the published (tau+1)^(-a)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fedcore.typed_config import require


@dataclass
class StalenessConfig:
    """Which staleness function, and its parameters a (decay) and b (hinge point)."""

    #: Weight of a stale update: polynomial (tau+1)^-a, hinge, or constant.
    function: Literal["constant", "polynomial", "hinge"] = "polynomial"
    #: Exponent (polynomial) or slope (hinge).
    a: float = 0.5
    #: Staleness up to which hinge weighs 1.
    b: int = 4

    def __post_init__(self) -> None:
        require(self.a >= 0, "a", "must be >= 0", self.a)
        require(self.b >= 0, "b", "must be >= 0", self.b)


def staleness_weight(tau: int, config: StalenessConfig) -> float:
    """s(tau) for tau >= 0 versions of staleness."""
    if tau < 0:
        raise ValueError(f"staleness must be >= 0, got {tau}")
    if config.function == "constant":
        return 1.0
    if config.function == "polynomial":
        return float((tau + 1) ** (-config.a))
    return 1.0 if tau <= config.b else 1.0 / (config.a * (tau - config.b) + 1.0)
