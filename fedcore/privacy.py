"""Differential-privacy arithmetic in plain Python (no opacus, no scipy, so a riscv64 client has
it): the analytic Gaussian mechanism's noise for a target (ε, δ), and the exact (ε, δ) of
repeated Gaussian releases, which compose to one Gaussian release (docs/privacy.md).

The classic formula σ = Δ·sqrt(2 ln(1.25/δ))/ε holds only for ε < 1 and is never used here; the
analytic mechanism (Balle and Wang, ICML 2018) is exact for every ε and needs less noise.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable

import numpy as np


def _log_normal_cdf(x: float) -> float:
    """log Φ(x), accurate where Φ(x) itself underflows (an asymptotic series below -20)."""
    if x > -20.0:
        return math.log(0.5 * math.erfc(-x / math.sqrt(2.0)))
    inverse_square = 1.0 / (x * x)
    series = 1.0 - inverse_square + 3.0 * inverse_square**2 - 15.0 * inverse_square**3
    return -0.5 * x * x - math.log(-x) - 0.5 * math.log(2.0 * math.pi) + math.log(series)


def gaussian_delta(sigma: float, epsilon: float, sensitivity: float = 1.0) -> float:
    """The exact δ(ε) of one Gaussian release with noise std `sigma` and L2 sensitivity
    `sensitivity` (Balle and Wang 2018, Theorem 8): Φ(a − b) − e^ε Φ(−a − b) with
    a = Δ / 2σ and b = εσ / Δ, the second term in log space (e^ε alone overflows)."""
    a = sensitivity / (2.0 * sigma)
    b = epsilon * sigma / sensitivity
    first = math.exp(_log_normal_cdf(a - b))
    second = math.exp(epsilon + _log_normal_cdf(-a - b))
    return max(first - second, 0.0)


def _smallest(exceeds: Callable[[float], bool], start: float) -> float:
    """The smallest x > 0 at which `exceeds(x)` turns false, given that it does so once as x
    grows past `start`'s doublings: doubling, then bisection to a relative 1e-12."""
    low, high = 0.0, start
    while exceeds(high):
        low, high = high, 2.0 * high
    while high - low > 1e-12 * high:
        middle = 0.5 * (low + high)
        if exceeds(middle):
            low = middle
        else:
            high = middle
    return high


def analytic_gaussian_sigma(epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    """The smallest noise std for which one Gaussian release of L2 sensitivity `sensitivity` is
    (epsilon, delta)-DP (δ(σ) falls as σ grows)."""
    if not (epsilon > 0 and 0 < delta < 1 and sensitivity > 0):
        raise ValueError(
            f"need epsilon > 0, 0 < delta < 1, sensitivity > 0; got {epsilon}, {delta}, "
            f"{sensitivity}"
        )
    return _smallest(lambda sigma: gaussian_delta(sigma, epsilon, sensitivity) > delta, sensitivity)


def gaussian_epsilon(noise_multiplier: float, releases: int, delta: float) -> float:
    """The exact ε at `delta` after `releases` Gaussian releases of noise multiplier z: they
    compose to one Gaussian release of multiplier z / sqrt(releases) (Dong, Roth and Su 2019,
    Gaussian DP), whose ε is where δ(ε) falls to `delta` (0 releases: 0)."""
    if releases == 0:
        return 0.0
    sigma = noise_multiplier / math.sqrt(releases)
    if gaussian_delta(sigma, 0.0) <= delta:
        return 0.0
    return _smallest(lambda epsilon: gaussian_delta(sigma, epsilon) > delta, 1.0)


def noise_norm_bound(sigma: float, numel: int) -> float:
    """A bound that the norm of N(0, sigma^2 I) in `numel` dimensions exceeds with probability
    below 2e-8: sigma (sqrt(numel) + 6) (Gaussian concentration of the norm, a 1-Lipschitz
    function, with P(norm >= sigma (sqrt(d) + t)) <= exp(-t^2 / 2))."""
    return sigma * (math.sqrt(numel) + 6.0)


def fresh_seed() -> int:
    """63 bits of the operating system's entropy: a seed no one else can know."""
    return secrets.randbits(63)


def derived_seed(*key: int) -> int:
    """A 63-bit seed derived from integer `key` parts (numpy's SeedSequence): distinct keys give
    independent streams, the same key the same one."""
    return int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0] >> np.uint64(1))
