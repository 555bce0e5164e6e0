"""Simulated heterogeneity: log-uniform speed spreads, mid-run slowdowns and outages on the
virtual clock, all drawn deterministically from the seed."""

from __future__ import annotations

import pytest

from fedcore.profiles import Outage, ProfileConfig, ProfileSampler, Slowdown
from fedcore.server.experiment import make_experiment, parse_experiment
from fedcore.server.simulation import Simulation
from fedcore.typed_config import ConfigError
from tests.conftest import FAST, composed
from tests.harness import record_sends


def test_loguniform_speeds_span_the_configured_spread():
    sampler = ProfileSampler(ProfileConfig(speed="loguniform", step_seconds=0.02), seed=3)
    steps = [sampler.profile(c).step_seconds for c in range(400)]
    assert 0.02 <= min(steps) < 0.025 and 0.18 < max(steps) <= 0.2
    again = ProfileSampler(ProfileConfig(speed="loguniform", step_seconds=0.02), seed=3)
    assert steps == [again.profile(c).step_seconds for c in range(400)]


def test_slowdowns_hit_a_seeded_fraction_from_their_start_and_compound():
    config = ProfileConfig(
        speed="constant",
        slowdowns=[Slowdown(at=10.0, fraction=0.5, factor=3.0), Slowdown(20.0, 1.0, 2.0)],
    )
    sampler = ProfileSampler(config, seed=0)
    before = [sampler.step_seconds(c, 9.9) for c in range(1000)]
    middle = [sampler.step_seconds(c, 10.0) for c in range(1000)]
    late = [sampler.step_seconds(c, 30.0) for c in range(1000)]
    assert set(before) == {0.05}
    slowed = [m > b for m, b in zip(middle, before, strict=True)]
    assert 400 < sum(slowed) < 600
    for b, m, after in zip(before, middle, late, strict=True):
        assert m in (pytest.approx(b), pytest.approx(3 * b))
        assert after == pytest.approx(2 * m)


def test_outage_windows_chain_and_release():
    config = ProfileConfig(outages=[Outage(5.0, 1.0, 10.0), Outage(12.0, 1.0, 10.0)])
    sampler = ProfileSampler(config, seed=0)
    assert sampler.offline_until(0, 4.0) == 4.0
    assert sampler.offline_until(0, 5.0) == 22.0, "the second window starts inside the first"
    assert sampler.offline_until(0, 22.0) == 22.0


def test_bad_change_is_a_config_error_naming_the_key():
    data = composed(*FAST, "+client_profiles.slowdowns=[{at: 1.0, fraction: 1.5, factor: 2.0}]")
    with pytest.raises(ConfigError, match=r"client_profiles.slowdowns\[0\].fraction"):
        parse_experiment(data)


def test_clients_in_an_outage_get_no_work_until_it_ends():
    config = composed(
        *FAST,
        "strategy=fedasync",
        "num_clients=8",
        "clients_per_round=8",
        "rounds=400",
        "client_profiles=uniform",
        "+client_profiles.outages=[{at: 2.0, fraction: 0.5, duration: 3.0}]",
        "evaluation.every=1000",
    )
    simulation = Simulation(make_experiment(config), config)
    sent = record_sends(simulation)
    simulation.run()
    assert simulation.now() > 6.0
    away = {c for c in range(8) if simulation.profiles.offline_until(c, 2.0) == 5.0}
    assert 0 < len(away) < 8
    for client in range(8):
        times = [at for at, task in sent if task.client_id == client]
        inside = [at for at in times if 2.0 <= at < 5.0]
        assert any(at >= 5.0 for at in times)
        if client in away:
            assert not inside, (client, times)
        else:
            assert inside
