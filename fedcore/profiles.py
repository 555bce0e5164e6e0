"""Simulated client devices: speed, link and availability, drawn per client on demand.

A profile is a pure function of (seed, client id), so 10,000 clients cost no memory until
one is used, and every run with the same seed sees the same federation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from fedcore.typed_config import require


@dataclass
class SpeedTier:
    """A share of the federation running at a given seconds-per-step."""

    share: float
    step_seconds: float

    def __post_init__(self) -> None:
        require(self.share > 0, "share", "must be > 0", self.share)
        require(self.step_seconds > 0, "step_seconds", "must be > 0", self.step_seconds)


@dataclass
class Slowdown:
    """From virtual time `at` on, a `fraction` of the clients (drawn from the seed) train
    `factor` times slower (e.g. thermal throttling or a competing job)."""

    at: float
    fraction: float
    factor: float

    def __post_init__(self) -> None:
        require(self.at >= 0, "at", "must be >= 0", self.at)
        require(0 < self.fraction <= 1, "fraction", "must be in (0, 1]", self.fraction)
        require(self.factor > 0, "factor", "must be > 0", self.factor)


@dataclass
class Outage:
    """From virtual time `at`, a `fraction` of the clients (drawn from the seed) is unreachable
    for `duration` seconds: idle ones leave at once, busy ones after their current task."""

    at: float
    fraction: float
    duration: float

    def __post_init__(self) -> None:
        require(self.at >= 0, "at", "must be >= 0", self.at)
        require(0 < self.fraction <= 1, "fraction", "must be in (0, 1]", self.fraction)
        require(self.duration > 0, "duration", "must be > 0", self.duration)


@dataclass
class ProfileConfig:
    """The heterogeneity distribution clients' profiles are drawn from, and scheduled changes."""

    #: How clients' seconds per step are drawn: constant, lognormal, loguniform or tiers.
    speed: Literal["constant", "lognormal", "loguniform", "tiers"] = "lognormal"
    #: Median (or base) simulated seconds per local step.
    step_seconds: float = 0.05
    #: Spread of lognormal speeds.
    speed_sigma: float = 0.8
    #: Slowest-to-fastest ratio of loguniform speeds.
    speed_spread: float = 10.0
    #: The tiers of speed `tiers`: `[{share, step_seconds}]`.
    tiers: list[SpeedTier] = field(default_factory=list)
    #: Median link bandwidth in Mbit/s.
    bandwidth_mbps: float = 20.0
    #: Spread of lognormal bandwidths.
    bandwidth_sigma: float = 0.5
    #: Per-transfer latency in seconds.
    latency_seconds: float = 0.05
    #: Chance a client is available again right after a task (else offline a while).
    availability: float = 1.0
    #: Mean seconds offline when a client is not available.
    offline_seconds: float = 60.0
    #: Chance a task is lost half-way (the client drops out).
    dropout: float = 0.0
    #: Scheduled slowdowns: `[{at, fraction, factor}]`.
    slowdowns: list[Slowdown] = field(default_factory=list)
    #: Scheduled outages: `[{at, fraction, duration}]`.
    outages: list[Outage] = field(default_factory=list)

    def __post_init__(self) -> None:
        require(self.step_seconds > 0, "step_seconds", "must be > 0", self.step_seconds)
        require(self.speed_sigma >= 0, "speed_sigma", "must be >= 0", self.speed_sigma)
        require(self.speed_spread >= 1, "speed_spread", "must be >= 1", self.speed_spread)
        require(
            self.speed != "tiers" or bool(self.tiers),
            "tiers",
            "must list at least one tier when speed is 'tiers'",
            self.tiers,
        )
        require(self.bandwidth_mbps > 0, "bandwidth_mbps", "must be > 0", self.bandwidth_mbps)
        require(self.bandwidth_sigma >= 0, "bandwidth_sigma", "must be >= 0", self.bandwidth_sigma)
        require(self.latency_seconds >= 0, "latency_seconds", "must be >= 0", self.latency_seconds)
        require(0 < self.availability <= 1, "availability", "must be in (0, 1]", self.availability)
        require(self.offline_seconds >= 0, "offline_seconds", "must be >= 0", self.offline_seconds)
        require(0 <= self.dropout < 1, "dropout", "must be in [0, 1)", self.dropout)


@dataclass(frozen=True)
class DeviceProfile:
    """One simulated client's device."""

    step_seconds: float
    bandwidth_bytes_per_second: float
    latency_seconds: float

    def transfer_seconds(self, nbytes: int) -> float:
        """Time to move `nbytes` over this client's link."""
        return self.latency_seconds + nbytes / self.bandwidth_bytes_per_second


class ProfileSampler:
    """Draws each client's profile and its per-task fate (offline, dropout) deterministically."""

    def __init__(self, config: ProfileConfig, seed: int) -> None:
        self.config = config
        self.seed = seed
        self._profiles: dict[int, DeviceProfile] = {}
        if config.speed == "tiers":
            shares = np.array([t.share for t in config.tiers], dtype=np.float64)
            self._tier_cdf = np.cumsum(shares / shares.sum())

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *key])

    def profile(self, client_id: int) -> DeviceProfile:
        """The device of `client_id`, drawn once (a keyed generator costs more than a task)."""
        known = self._profiles.get(client_id)
        if known is None:
            known = self._profiles[client_id] = self._draw_profile(client_id)
        return known

    def _draw_profile(self, client_id: int) -> DeviceProfile:
        config = self.config
        rng = self._rng(0, client_id)
        if config.speed == "constant":
            step = config.step_seconds
        elif config.speed == "lognormal":
            step = config.step_seconds * float(rng.lognormal(0.0, config.speed_sigma))
        elif config.speed == "loguniform":
            step = config.step_seconds * config.speed_spread ** float(rng.random())
        else:
            tier = int(np.searchsorted(self._tier_cdf, rng.random(), side="right"))
            step = config.tiers[min(tier, len(config.tiers) - 1)].step_seconds
        bandwidth = config.bandwidth_mbps * float(rng.lognormal(0.0, config.bandwidth_sigma))
        return DeviceProfile(step, bandwidth * 1e6 / 8, config.latency_seconds)

    def step_seconds(self, client_id: int, at: float) -> float:
        """Seconds per step of `client_id` at virtual time `at`: its profile's, times the factor
        of every slowdown that has begun and includes it."""
        step = self.profile(client_id).step_seconds
        for index, slowdown in enumerate(self.config.slowdowns):
            if slowdown.at <= at and self._chosen(3, index, client_id, slowdown.fraction):
                step *= slowdown.factor
        return step

    def offline_until(self, client_id: int, at: float) -> float:
        """The earliest time >= `at` at which `client_id` is outside every outage window."""
        ready, moved = at, True
        while moved:
            moved = False
            for index, outage in enumerate(self.config.outages):
                end = outage.at + outage.duration
                if outage.at <= ready < end and self._chosen(4, index, client_id, outage.fraction):
                    ready, moved = end, True
        return ready

    def outage_starts(self) -> list[float]:
        """Virtual times at which an outage begins, in configuration order."""
        return [outage.at for outage in self.config.outages]

    def _chosen(self, kind: int, index: int, client_id: int, fraction: float) -> bool:
        """Whether `client_id` is among the `fraction` a scheduled change (kind, index) hits."""
        return bool(self._rng(kind, index, client_id).random() < fraction)

    def drops_out(self, client_id: int, task_key: int) -> bool:
        """Whether this client vanishes during the task identified by `task_key` (its seed);
        no draw without dropout (each draw is independent, so skipping one changes nothing)."""
        dropout = self.config.dropout
        return bool(dropout) and bool(self._rng(1, client_id, task_key).random() < dropout)

    def offline_after(self, client_id: int, task_key: int, forced: bool = False) -> float:
        """Seconds the client stays offline after that task: 0 when it stays available; always
        a positive draw after a dropout (`forced`); no draw for an always available client."""
        if not forced and self.config.availability >= 1:
            return 0.0
        rng = self._rng(2, client_id, task_key)
        if not forced and rng.random() < self.config.availability:
            return 0.0
        return float(rng.exponential(self.config.offline_seconds))
