"""The server's account of each client's privacy loss, and central DP's clipping and noise.

Every training update a client sends counts, whatever becomes of it (accepted, refused or
expired: the server saw it). Under local DP an upload is one Gaussian release of noise
multiplier z, and a client's ε is the exact composition of its uploads (`fedcore/privacy.py`).
Under DP-SGD an update is `steps` Poisson-subsampled Gaussian steps at rate q = batch_size / the
examples the client has, composed by Opacus's RDP or PRV accountant. Either ε is stated at
`privacy.delta`; a client that tightened its own settings has lost at most this. Under central
DP the server clips each update to C and adds N(0, (lr z C / k)^2) to the model it publishes
from the mean of k updates; every client's ε is that of the versions published so far, each a
Gaussian step subsampled at rate clients_per_round / num_clients. The counts are
rebuilt from the whole ledger on resume, entries voided by the resume included: what was
released stays spent.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import torch

from fedcore.clients.sgd import SGDParams, planned_steps
from fedcore.clients.transforms.clip import clipped
from fedcore.config import ExperimentConfig
from fedcore.payloads import DenseDelta, SparseDelta
from fedcore.privacy import derived_seed, fresh_seed, gaussian_epsilon
from fedcore.records import Update

#: Ledger events that record a training update the client sent.
RELEASES = frozenset({"accepted", "expired", "rejected"})
#: Separates central DP's noise stream from every other stream keyed by the run seed.
_CENTRAL_STREAM = 0x4345_4E54


def _entropy(version: int) -> int:
    """Central noise for a deployed server: the operating system's entropy."""
    return fresh_seed()


class PrivacyAccountant:
    """Each client's releases and the ε they add up to."""

    def __init__(
        self, config: ExperimentConfig, noise_seed: Callable[[int], int] = _entropy
    ) -> None:
        """`noise_seed(version)` seeds central DP's noise for a version: fresh entropy by
        default, a stream keyed by the run seed in a simulation (`keyed_noise`)."""
        privacy = config.privacy
        self.noise_seed = noise_seed
        self.server_lr = float(config.strategy.get("server_step", {}).get("lr", 1.0))
        self.central_rate = config.clients_per_round / config.num_clients
        #: Central DP: versions published with noise, and every client's ε after them.
        self.versions = 0
        self._central = 0.0
        self.mode = privacy.mode
        self.max_norm = privacy.max_norm
        self.noise_multiplier = privacy.multiplier()
        self.delta = privacy.delta
        self.accountant = privacy.accountant
        self.budget = privacy.budget
        training = config.training
        self.batch_size = training.batch_size
        self.local_steps = training.local_steps
        self.epochs = training.local_epochs
        #: Local DP: uploads per client.
        self.uploads: Counter[int] = Counter()
        #: DP-SGD: steps per client at each sampling rate.
        self.steps: defaultdict[int, Counter[float]] = defaultdict(Counter)
        self._epsilon: dict[int, float] = {}

    def released(self, client: int, examples: int, steps: int) -> float:
        """Count one update by `client` (claiming `examples` and `steps`, counted at most at
        the steps its task asked for: a claim cannot make the account grow without bound);
        its ε now."""
        self._count(client, examples, steps)
        return self._update(client)

    def _count(self, client: int, examples: int, steps: int) -> None:
        self.uploads[client] += 1
        if self.mode == "dpsgd":
            self.steps[client][self._rate(examples)] += min(steps, self._planned(examples))

    def _rate(self, examples: int) -> float:
        """DP-SGD's Poisson sampling rate on `examples` examples."""
        return min(1.0, self.batch_size / max(1, examples))

    def _planned(self, examples: int) -> int:
        """The steps a training task asks of a client with `examples` examples."""
        sgd = SGDParams(batch_size=self.batch_size, epochs=self.epochs)
        return planned_steps(self.local_steps, sgd, max(1, examples))

    def _update(self, client: int) -> float:
        value = self._epsilon_of(self.uploads[client], self.steps[client])
        self._epsilon[client] = value
        return value

    def _epsilon_of(self, uploads: int, steps: Counter[float]) -> float:
        if self.mode == "local":
            return gaussian_epsilon(self.noise_multiplier, uploads, self.delta)
        if self.mode == "central":
            return self._central
        return self._opacus_epsilon(steps)

    def _central_after(self, versions: int) -> float:
        """Central DP: every client's ε after `versions` noised versions."""
        return self._opacus_epsilon(Counter({self.central_rate: versions}))

    def clip(self, update: Update) -> Update:
        """Central DP: the update with its delta clipped to norm C on the server."""
        payload = update.payload
        if not isinstance(payload, DenseDelta | SparseDelta):
            return update
        values = clipped(payload.values, self.max_norm)
        return replace(update, payload=replace(payload, values=values))

    def noised(self, params: torch.Tensor, version: int, aggregated: int) -> torch.Tensor:
        """Central DP: `params` published from the mean of `aggregated` clipped updates, with
        N(0, (lr z C / aggregated)^2) on every coordinate; the version is counted."""
        self.versions += 1
        self._central = self._central_after(self.versions)
        std = self.server_lr * self.noise_multiplier * self.max_norm / max(1, aggregated)
        generator = torch.Generator().manual_seed(self.noise_seed(version))
        noised = torch.randn(params.shape, generator=generator, dtype=params.dtype)
        return noised.mul_(std).add_(params.cpu()).to(params.device)

    def next_epsilon(self, client: int, examples: int) -> float:
        """`client`'s ε after one more training task on `examples` examples."""
        if self.mode == "central":
            return self._central_after(self.versions + 1)
        steps = Counter(self.steps[client])
        if self.mode == "dpsgd":
            steps[self._rate(examples)] += self._planned(examples)
        return self._epsilon_of(self.uploads[client] + 1, steps)

    def affords(self, client: int, examples: int) -> bool:
        """Whether another training task keeps `client` within the budget (always, with none)."""
        return not self.budget or self.next_epsilon(client, examples) <= self.budget

    def _opacus_epsilon(self, steps: Counter[float]) -> float:
        from opacus.accountants import PRVAccountant, RDPAccountant

        history = [
            (self.noise_multiplier, rate, count) for rate, count in sorted(steps.items()) if count
        ]
        if not history:
            return 0.0
        if self.accountant == "prv":
            prv = PRVAccountant()
            prv.history = history
            return float(prv.get_epsilon(self.delta))
        rdp = RDPAccountant()
        rdp.history = history
        return float(rdp.get_epsilon(self.delta, alphas=rdp_orders()))

    def epsilon(self, client: int) -> float:
        """`client`'s ε at `delta` over everything it sent (0 before it sent anything; under
        central DP, every client's)."""
        if self.mode == "central":
            return self._central
        return self._epsilon.get(client, 0.0)

    def worst(self) -> float:
        """The largest ε of any client."""
        if self.mode == "central":
            return self._central
        return max(self._epsilon.values(), default=0.0)

    def rebuild(self, entries: Iterable[dict[str, Any]]) -> None:
        """Count the updates and noised versions a ledger records (a resumed run's, voided
        entries included: a version published before a crash and again after it is two
        releases)."""
        self.uploads.clear()
        self.steps.clear()
        self._epsilon.clear()
        self.versions = 0
        for entry in entries:
            if entry.get("event") in RELEASES and isinstance(entry.get("client"), int):
                self._count(entry["client"], int(entry["examples"]), int(entry["steps"]))
            elif entry.get("event") == "model" and self.mode == "central":
                self.versions += 1
        if self.mode == "central":
            self._central = self._central_after(self.versions)
        for client in self.uploads:
            self._update(client)

    def summary(self) -> dict[str, Any]:
        """What the run's guarantee is, in the terms a report of it must state."""
        if self.mode == "local":
            terms = {
                "unit": "one client's update (replace-one neighbours: sensitivity 2 * max_norm)",
                "accountant": "exact composition of Gaussian releases (Gaussian DP)",
                "sampling": "none assumed: every upload a client made composes in full",
                "epsilon_per_upload": gaussian_epsilon(self.noise_multiplier, 1, self.delta),
            }
        elif self.mode == "central":
            terms = {
                "unit": "one client's participation (add/remove a client), against anyone "
                "but the server, which sees the updates unnoised",
                "accountant": f"opacus {self.accountant}",
                "sampling": f"each version's clients taken as Poisson-sampled at rate "
                f"clients_per_round / num_clients = {self.central_rate:.4g} (fedcore samples "
                "that many without replacement)",
                "versions_noised": self.versions,
            }
        else:
            terms = {
                "unit": "one training example of a client (add/remove neighbours)",
                "accountant": f"opacus {self.accountant}",
                "sampling": "Poisson sampling of each step's batch at rate batch_size / the "
                "client's examples; no amplification by client sampling is assumed",
            }
        by_client = {str(client): self.epsilon(client) for client in sorted(self._epsilon)}
        return {
            "mode": self.mode,
            **terms,
            "budget": self.budget,
            "max_norm": self.max_norm,
            "noise_multiplier": self.noise_multiplier,
            "delta": self.delta,
            # Central DP's ε is every client's, sampled or not: no per-client list.
            "epsilon_max": self.worst(),
            **({} if self.mode == "central" else {"epsilon_by_client": by_client}),
        }


def rdp_orders() -> list[float]:
    """The Rényi orders the RDP accountant minimises over: Opacus's, which stop at 63, and
    larger ones, where few lightly noised steps have their tightest bound."""
    from opacus.accountants import RDPAccountant

    return [*RDPAccountant.DEFAULT_ALPHAS, *range(64, 256, 8), *range(256, 1025, 64)]


def keyed_noise(run_seed: int) -> Callable[[int], int]:
    """A simulation's central noise: a stream keyed by the run seed and the version."""

    def seed(version: int) -> int:
        return derived_seed(run_seed, _CENTRAL_STREAM, version)

    return seed


def privacy_accountant(
    config: ExperimentConfig, noise_seed: Callable[[int], int] = _entropy
) -> PrivacyAccountant | None:
    """The accountant a private run keeps (None without privacy)."""
    if config.privacy.mode == "none":
        return None
    return PrivacyAccountant(config, noise_seed)
