"""Baseline strategies driven event by event: FedAvg, FedProx, FedAvgM, FedAdam, FedAsync."""

import itertools
import math

import pytest
import torch

from fedcore.config import TrainingConfig
from fedcore.strategies.fedasync import FedAsync, FedAsyncConfig
from fedcore.strategies.fedavg import FedAdamConfig, FedAvg, FedAvgConfig, FedAvgMConfig
from fedcore.strategies.fedprox import FedProx, FedProxConfig
from fedcore.strategies.server_step import ServerStepConfig
from fedcore.strategies.staleness import StalenessConfig, staleness_weight
from tests.harness import ScriptedContext

P = 257


def _deltas(n, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(P, generator=generator) for _ in range(n)]


def test_fedavg_round_is_the_example_weighted_mean_of_client_models():
    strategy = FedAvg(FedAvgConfig(clients_per_round=4, norm_bound=0), seed=1)
    start = torch.randn(P)
    ctx = ScriptedContext(strategy, start, clients=10)
    strategy.on_start()
    assert len(ctx.tasks) == 4 and len({t.client_id for t in ctx.tasks}) == 4
    examples = [5, 50, 7, 300]
    deltas = _deltas(4)
    cohort = list(ctx.tasks)
    for task, delta, n in zip(cohort, deltas, examples, strict=True):
        ctx.arrive(task, delta, n)
    assert ctx.model.version == 1
    client_models = [start.double() + d.double() for d in deltas]
    direct = sum(n * m for n, m in zip(examples, client_models, strict=True)) / sum(examples)
    assert torch.allclose(ctx.model.params.double(), direct, atol=1e-6)
    assert len(ctx.tasks) == 8, "the next round opens as soon as the model is published"
    assert all(t.version == 1 for t in ctx.tasks[4:])


def test_fedavg_uniform_weighting_and_deadline_with_partial_cohort():
    config = FedAvgConfig(
        clients_per_round=4,
        weighting="uniform",
        round_timeout=30.0,
        min_fraction=0.5,
        norm_bound=0,
    )
    strategy = FedAvg(config, seed=2)
    ctx = ScriptedContext(strategy, torch.zeros(P), clients=4)
    strategy.on_start()
    deltas = _deltas(2, seed=5)
    ctx.arrive(ctx.tasks[0], deltas[0], 1)
    ctx.arrive(ctx.tasks[1], deltas[1], 1000)
    assert ctx.model.version == 0
    ctx.clock = 30.0
    strategy.on_timer("round-deadline-1")
    assert ctx.model.version == 1
    assert torch.allclose(ctx.model.params, (deltas[0] + deltas[1]) / 2)


def test_round_below_min_fraction_at_deadline_starts_over():
    strategy = FedAvg(FedAvgConfig(clients_per_round=4, round_timeout=10.0, min_fraction=0.75), 0)
    ctx = ScriptedContext(strategy, torch.zeros(P), clients=6)
    strategy.on_start()
    ctx.arrive(ctx.tasks[0], torch.ones(P))
    ctx.clock = 10.0
    strategy.on_timer("round-deadline-1")
    assert ctx.model.version == 0
    assert strategy.round == 1 and not strategy.in_round, "only 3 idle clients: it waits"
    assert len(ctx.tasks) == 4
    ctx.idle.add(ctx.tasks[1].client_id)
    strategy.on_client_idle(ctx.tasks[1].client_id)
    assert strategy.round == 2 and len(ctx.tasks) == 8


def test_fedprox_tasks_carry_mu():
    strategy = FedProx(FedProxConfig(clients_per_round=2, mu=0.3), seed=0)
    ctx = ScriptedContext(strategy, torch.zeros(P), clients=2)
    strategy.on_start()
    assert [t.hyper["prox_mu"] for t in ctx.tasks] == [0.3, 0.3]


def test_fedavgm_and_fedadam_server_steps():
    deltas = _deltas(2, seed=9)
    start = torch.randn(P)
    step = ServerStepConfig(name="momentum", lr=0.5, momentum=0.9)
    momentum = FedAvg(FedAvgMConfig(clients_per_round=1, norm_bound=0, server_step=step), 0)
    ctx = ScriptedContext(momentum, start, clients=1)
    momentum.on_start()
    ctx.arrive(ctx.tasks[0], deltas[0])
    assert len(ctx.tasks) == 2
    ctx.arrive(ctx.tasks[1], deltas[1])
    velocity = 0.9 * deltas[0] + deltas[1]
    assert torch.allclose(ctx.model.params, start + 0.5 * deltas[0] + 0.5 * velocity, atol=1e-6)

    step = ServerStepConfig(name="adam", lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    adam = FedAvg(FedAdamConfig(clients_per_round=1, norm_bound=0, server_step=step), 0)
    ctx = ScriptedContext(adam, start, clients=1)
    adam.on_start()
    ctx.arrive(ctx.tasks[0], deltas[0])
    m = 0.1 * deltas[0]
    v = 0.01 * deltas[0] ** 2
    assert torch.allclose(ctx.model.params, start + 0.1 * m / (v.sqrt() + 1e-3), atol=1e-5)
    assert torch.allclose(adam.state_dict()["server_step"]["m"], m, atol=1e-7)


@pytest.mark.parametrize("function", ["constant", "polynomial", "hinge"])
def test_staleness_weights_never_increase(function):
    config = StalenessConfig(function=function, a=0.5, b=3)
    weights = [staleness_weight(t, config) for t in range(50)]
    assert weights[0] == 1.0
    assert all(later <= earlier for earlier, later in itertools.pairwise(weights))
    if function != "constant":
        assert weights[-1] < 0.5


def test_staleness_formulas():
    assert staleness_weight(3, StalenessConfig("polynomial", a=0.5)) == pytest.approx(4**-0.5)
    assert staleness_weight(3, StalenessConfig("hinge", a=2.0, b=3)) == 1.0
    assert staleness_weight(5, StalenessConfig("hinge", a=2.0, b=3)) == pytest.approx(1 / 5)


def test_fedasync_mixes_each_arrival_with_its_staleness_weight():
    config = FedAsyncConfig(
        clients_per_round=3,
        alpha=0.6,
        staleness=StalenessConfig("polynomial", a=0.5),
        training=TrainingConfig(local_steps=2),
    )
    strategy = FedAsync(config, seed=4)
    start = torch.randn(P)
    ctx = ScriptedContext(strategy, start, clients=5)
    strategy.on_start()
    first, second, third = ctx.tasks[:3]
    assert all(t.version == 0 and t.local_steps == 2 for t in (first, second, third))
    deltas = _deltas(3, seed=11)
    ctx.arrive(first, deltas[0])  # staleness 0
    expected = start * 0.4 + (start + deltas[0]) * 0.6
    assert torch.allclose(ctx.model.params, expected, atol=1e-6)
    assert len(ctx.tasks) == 4, "the freed slot is refilled at once"
    ctx.arrive(second, deltas[1])  # based on version 0, now at version 1: staleness 1
    rate = 0.6 * 2**-0.5
    expected = expected * (1 - rate) + (start + deltas[1]) * rate
    assert torch.allclose(ctx.model.params, expected, atol=1e-6)
    assert ctx.infos[-1]["staleness"] == 1
    assert ctx.infos[-1]["mixing_rate"] == pytest.approx(rate)
    ctx.arrive(third, deltas[2])  # staleness 2
    assert ctx.infos[-1]["mixing_rate"] == pytest.approx(0.6 * 3**-0.5)
    assert math.isclose(ctx.infos[-1]["mixing_rate"] / ctx.infos[0]["mixing_rate"], 3**-0.5)


def test_strategy_state_round_trips():
    strategy = FedAvg(FedAvgConfig(clients_per_round=2), seed=7)
    ctx = ScriptedContext(strategy, torch.zeros(P), clients=6)
    strategy.on_start()
    state = strategy.state_dict()
    draws = strategy.rng.integers(1000, size=5)
    clone = FedAvg(FedAvgConfig(clients_per_round=2), seed=999)
    clone.load_state_dict(state)
    assert clone.round == 1 and list(clone.rng.integers(1000, size=5)) == list(draws)
    del ctx


def test_round_whose_whole_cohort_is_lost_is_replaced_by_a_new_one():
    strategy = FedAvg(FedAvgConfig(clients_per_round=2), seed=3)
    ctx = ScriptedContext(strategy, torch.zeros(P), clients=4)
    strategy.on_start()
    first = list(ctx.tasks)
    for task in first:
        strategy.on_task_lost(task)
    assert strategy.round == 2 and strategy.in_round
    assert len(ctx.tasks) == 4 and ctx.model.version == 0


def test_round_completes_when_the_rest_of_the_cohort_is_lost():
    strategy = FedAvg(FedAvgConfig(clients_per_round=3), seed=3)
    ctx = ScriptedContext(strategy, torch.zeros(P), clients=3)
    strategy.on_start()
    cohort = list(ctx.tasks)
    ctx.arrive(cohort[0], torch.ones(P))
    strategy.on_task_lost(cohort[1])
    assert ctx.model.version == 0
    strategy.on_task_lost(cohort[2])
    assert ctx.model.version == 1 and torch.equal(ctx.model.params, torch.ones(P))


def test_updates_are_shrunk_to_the_median_norm_of_recent_updates():
    """Round 1 has no history: its updates wait for its close and its own median bounds them;
    round 2's bound is fixed from round 1's norms when it opens."""
    strategy = FedAvg(FedAvgConfig(clients_per_round=3, weighting="uniform"), seed=0)
    ctx = ScriptedContext(strategy, torch.zeros(P), clients=3)
    strategy.on_start()
    ones = torch.ones(P)
    for task, scale in zip(list(ctx.tasks), (1.0, 2.0, 100.0), strict=True):
        ctx.arrive(task, ones * scale)
    assert torch.allclose(ctx.model.params, ones * (1 + 2 + 2) / 3)
    assert ctx.infos[0]["shrunk"] == 1
    start = ctx.model.params
    for task, scale in zip(ctx.tasks[-3:], (-50.0, 0.5, 2.0), strict=True):
        ctx.arrive(task, ones * scale)
    assert torch.allclose(ctx.model.params, start + ones * (-2 + 0.5 + 2) / 3)
    assert ctx.infos[1]["shrunk"] == 1
    clone = FedAvg(FedAvgConfig(clients_per_round=3), seed=0)
    clone.load_state_dict(strategy.state_dict())
    assert clone.norm_bound.norms == strategy.norm_bound.norms
    assert len(strategy.norm_bound.norms) == 6
