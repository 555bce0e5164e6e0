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
        self.cause = "a learning rate too high is the usual cause"
        self.advice = f"lower training.lr (now {training.lr:g})"
        if server.get("lr", 1.0) != 1.0:
            self.advice += f" or strategy.server_step.lr (now {server['lr']:g})"
        privacy = config.privacy
        if privacy.mode == "local":
            sigma = privacy.multiplier() * 2 * privacy.max_norm
            self.cause = (
                f"local DP noise of std {sigma:.3g} on every coordinate of each update is the "
                "likely cause"
            )
            self.advice = (
                "more clients per round, a larger privacy.epsilon or a smaller "
                f"privacy.max_norm (now {privacy.max_norm:g}) with a lower training.lr"
            )
        if privacy.mode == "dpsgd":
            self.cause = (
                f"DP-SGD noise (multiplier {privacy.noise_multiplier:g} on batches of "
                f"{training.batch_size}) is a likely cause"
            )
            self.advice += ", a larger training.batch_size or a smaller privacy.noise_multiplier"

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
            f"{DIVERGED} at model version {version}: {name} is {what}; {self.cause}: "
            f"{self.advice} (divergence.loss_factor=0 turns this check off)"
        )
