"""The server's account of each client's privacy loss under local DP (`privacy.mode=local`).

Every training update a client sends is one Gaussian release of noise multiplier z, whatever
becomes of it (accepted, refused or expired: the server saw it), so a client's ε is the exact
composition of its uploads (`fedcore/privacy.py`), stated at `privacy.delta`. A client that
tightened its own settings has lost at most this. The counts are rebuilt from the whole
ledger on resume, entries voided by the resume included: what was released stays spent.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from fedcore.config import ExperimentConfig, PrivacyConfig
from fedcore.privacy import gaussian_epsilon

#: Ledger events that record a training update the client sent.
RELEASES = frozenset({"accepted", "expired", "rejected"})


class LocalDPAccountant:
    """Uploads per client and the ε they add up to."""

    def __init__(self, privacy: PrivacyConfig) -> None:
        self.max_norm = privacy.max_norm
        self.noise_multiplier = privacy.multiplier()
        self.delta = privacy.delta
        self.uploads: Counter[int] = Counter()

    def released(self, client: int) -> float:
        """Count one more upload by `client`; its ε now."""
        self.uploads[client] += 1
        return self.epsilon(client)

    def epsilon(self, client: int) -> float:
        """`client`'s ε at `delta` over every upload it made."""
        return gaussian_epsilon(self.noise_multiplier, self.uploads[client], self.delta)

    def worst(self) -> float:
        """The largest ε of any client (0 before any upload)."""
        most = max(self.uploads.values(), default=0)
        return gaussian_epsilon(self.noise_multiplier, most, self.delta)

    def rebuild(self, entries: Iterable[dict[str, Any]]) -> None:
        """Count the uploads a ledger records (a resumed run's, voided entries included)."""
        self.uploads = Counter(
            int(entry["client"])
            for entry in entries
            if entry.get("event") in RELEASES and isinstance(entry.get("client"), int)
        )

    def summary(self) -> dict[str, Any]:
        """What the run's guarantee is, in the terms a report of it must state."""
        return {
            "mode": "local",
            "unit": "one client's update (replace-one neighbours: sensitivity 2 * max_norm)",
            "accountant": "exact composition of Gaussian releases (Gaussian DP; fedcore/privacy.py)",
            "sampling": "none assumed: every upload a client made composes in full",
            "max_norm": self.max_norm,
            "noise_multiplier": self.noise_multiplier,
            "delta": self.delta,
            "epsilon_per_upload": gaussian_epsilon(self.noise_multiplier, 1, self.delta),
            "epsilon_max": self.worst(),
            "epsilon_by_client": {
                str(client): self.epsilon(client) for client in sorted(self.uploads)
            },
        }


def local_dp_accountant(config: ExperimentConfig) -> LocalDPAccountant | None:
    """The accountant a run under local DP keeps (None for any other mode)."""
    return LocalDPAccountant(config.privacy) if config.privacy.mode == "local" else None
