"""Stops a run whose loss has gone non-finite or exploded, with one line that names the likely
cause and the setting to change, instead of letting it spend its remaining rounds on noise."""

from __future__ import annotations

import math
from collections.abc import Callable

from fedcore.config import ExperimentConfig

#: How the stop reason of a diverged run begins.
DIVERGED = "diverged"


class DivergenceGuard:
    """Compares each version's training loss (clients' mean) and each central test loss with
    the initial model's test loss; a non-finite loss, or one more than `divergence.loss_factor`
    times the initial one, calls `stop` with the reason."""

    def __init__(
        self, config: ExperimentConfig, initial_loss: float, stop: Callable[[str], None]
    ) -> None:
        self.factor = config.divergence.loss_factor
        self.initial_loss = initial_loss
        self.stop = stop
        self.tripped = False
        training, server = config.training, config.strategy.get("server_step", {})
        self.advice = f"lower training.lr (now {training.lr:g})"
        if server.get("lr", 1.0) != 1.0:
            self.advice += f" or strategy.server_step.lr (now {server['lr']:g})"

    def check(self, version: int, name: str, loss: float | None) -> None:
        """Look at `loss` (the `name` of version `version`; None: none was measured)."""
        if self.tripped or loss is None:
            return
        if math.isfinite(loss) and loss <= self.factor * self.initial_loss:
            return
        self.tripped = True
        what = (
            f"{loss:.3g}, more than {self.factor:g}x the initial model's test loss "
            f"({self.initial_loss:.3g})"
            if math.isfinite(loss)
            else "not finite"
        )
        self.stop(
            f"{DIVERGED} at model version {version}: {name} is {what}; a learning rate too "
            f"high is the usual cause: {self.advice} (divergence.loss_factor=0 turns this "
            "check off)"
        )
