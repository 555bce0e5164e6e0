"""Server steps compose with every policy: closed forms of FedAdam (and Yogi, Adagrad) over
three aggregations with FedAvg's rounds, FedBuff's buffer and FedCompass's groups."""

from __future__ import annotations

import pytest
import torch

from fedcore.strategies.fedavg import FedAvg, FedAvgConfig
from fedcore.strategies.fedbuff import FedBuff, FedBuffConfig
from fedcore.strategies.fedcompass import FedCompass, FedCompassConfig
from fedcore.strategies.server_step import ServerStep, ServerStepConfig
from fedcore.strategies.staleness import StalenessConfig
from tests.harness import ScriptedContext

P = 96
ADAM = ServerStepConfig(name="adam", lr=0.05, beta1=0.9, beta2=0.99, tau=1e-3)


def _deltas(seed: int, n: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(P, generator=generator) for _ in range(n)]


def _closed_form(
    start: torch.Tensor, pseudo_gradients: list[torch.Tensor], step: ServerStepConfig
) -> torch.Tensor:
    """Reddi et al. Algorithm 2 in float64, from zero moments, with no bias correction."""
    w, m, v = (
        start.double(),
        torch.zeros(P, dtype=torch.float64),
        torch.zeros(P, dtype=torch.float64),
    )
    for delta in pseudo_gradients:
        d = delta.double()
        m = step.beta1 * m + (1 - step.beta1) * d
        if step.name == "adam":
            v = step.beta2 * v + (1 - step.beta2) * d * d
        elif step.name == "yogi":
            v = v - (1 - step.beta2) * d * d * torch.sign(v - d * d)
        else:
            v = v + d * d
        w = w + step.lr * m / (v.sqrt() + step.tau)
    return w


def test_fedadam_with_fedbuff_matches_its_closed_form_over_three_flushes():
    config = FedBuffConfig(
        clients_per_round=2,
        buffer_size=2,
        alpha=0.8,
        staleness=StalenessConfig("constant"),
        server_step=ADAM,
    )
    strategy = FedBuff(config, seed=0)
    start = torch.randn(P, generator=torch.Generator().manual_seed(9))
    ctx = ScriptedContext(strategy, start, clients=2)
    strategy.on_start()
    pseudo = []
    for flush in range(3):
        pair = _deltas(flush, 2)
        for task, delta in zip(ctx.tasks[-2:], pair, strict=True):
            ctx.arrive(task, delta)
        pseudo.append(0.8 * (pair[0] + pair[1]) / 2)
    assert ctx.model.version == 3
    assert torch.allclose(ctx.model.params.double(), _closed_form(start, pseudo, ADAM), atol=1e-5)


def test_fedadam_with_fedcompass_matches_its_closed_form_over_three_groups():
    config = FedCompassConfig(
        min_local_steps=2, max_local_steps=10, alpha=0.9, weighting="uniform", server_step=ADAM
    )
    strategy = FedCompass(config, seed=0)
    start = torch.randn(P, generator=torch.Generator().manual_seed(8))
    ctx = ScriptedContext(strategy, start, clients=2)
    ctx.speeds.update({0: 1.0, 1: 1.0})
    strategy.on_start()
    pseudo = []
    for group in range(3):
        tasks = ctx.tasks[-2:]
        assert {t.client_id for t in tasks} == {0, 1} and all(t.local_steps == 10 for t in tasks)
        pair = _deltas(10 + group, 2)
        ctx.clock += 10.0
        for task, delta in zip(tasks, pair, strict=True):
            ctx.arrive(task, delta)
        pseudo.append(0.9 * (pair[0] + pair[1]) / 2)
        assert ctx.model.version == group + 1
    assert torch.allclose(ctx.model.params.double(), _closed_form(start, pseudo, ADAM), atol=1e-5)


@pytest.mark.parametrize("name", ["yogi", "adagrad", "adam"])
def test_adaptive_steps_with_fedavg_match_their_closed_forms(name):
    step = ServerStepConfig(name=name, lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    strategy = FedAvg(FedAvgConfig(clients_per_round=1, norm_bound=0, server_step=step), seed=0)
    start = torch.randn(P, generator=torch.Generator().manual_seed(7))
    ctx = ScriptedContext(strategy, start, clients=1)
    strategy.on_start()
    deltas = _deltas(3, 3)
    for delta in deltas:
        ctx.arrive(ctx.tasks[-1], delta)
    assert torch.allclose(ctx.model.params.double(), _closed_form(start, deltas, step), atol=1e-5)


def test_the_plain_step_is_exactly_w_plus_delta_and_moments_survive_a_checkpoint():
    start, delta = torch.randn(P), torch.randn(P)
    plain = ServerStep(ServerStepConfig())
    assert torch.equal(plain.apply(start, delta.clone(), reuse=True), delta + start)
    adam = ServerStep(ADAM)
    adam.apply(start, delta)
    again = ServerStep(ADAM)
    again.load_state_dict({k: v.clone() for k, v in adam.state_dict().items()})
    assert torch.equal(adam.apply(start, delta), again.apply(start, delta))
