"""FedLAW: reduction to FedAvg, learned weights against FedAvg on a constructed proxy problem,
the collapse guards, partial participation, and the server data set carved before partitioning."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from fedcore.config import ExperimentConfig
from fedcore.data import holdout_split, partition
from fedcore.data.split import Split
from fedcore.federation import make_federation, server_data
from fedcore.params import ModelLayout
from fedcore.server.experiment import make_experiment, parse_experiment
from fedcore.server.simulation import simulate
from fedcore.strategies.base import ServerResources
from fedcore.strategies.fedavg import FedAvg, FedAvgConfig
from fedcore.strategies.fedlaw import FedLAW, FedLAWConfig
from fedcore.typed_config import ConfigError, build
from tests.conftest import FAST, composed
from tests.harness import ScriptedContext

FEATURES, CLASSES = 4, 3


def _linear() -> nn.Module:
    return nn.Linear(FEATURES, CLASSES)


def _true_params() -> torch.Tensor:
    """A linear classifier the proxy labels follow, as a flat [weight, bias] vector."""
    weight = torch.randn(CLASSES, FEATURES, generator=torch.Generator().manual_seed(0))
    return torch.cat([weight.reshape(-1), torch.zeros(CLASSES)])


def _proxy(noisy: bool = False) -> Split:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(60, FEATURES, generator=generator)
    y = (x @ _true_params()[:12].view(CLASSES, FEATURES).t()).argmax(dim=1)
    if noisy:
        y = torch.randint(0, CLASSES, (60,), generator=generator)
    return Split(x, y)


def _proxy_loss(params: torch.Tensor, proxy: Split) -> float:
    """Mean cross-entropy of the linear model `params` on the proxy set, computed directly."""
    weight, bias = params[:12].view(CLASSES, FEATURES), params[12:]
    return float(nn.functional.cross_entropy(proxy.x @ weight.t() + bias, proxy.y))


def _context(strategy: Any, clients: int, proxy: Split | None = None) -> ScriptedContext:
    layout = ModelLayout.of(_linear())
    ctx = ScriptedContext(strategy, torch.zeros(layout.params.numel), clients)
    ctx._layout = layout
    if proxy is not None:
        strategy.bind_resources(ServerResources(_linear, layout, proxy))
    return ctx


def _one_round(strategy: Any, proxy: Split, deltas: list[torch.Tensor], examples: list[int]):
    ctx = _context(strategy, clients=len(deltas), proxy=proxy)
    strategy.on_start()
    for task, delta, n in zip(list(ctx.tasks), deltas, examples, strict=True):
        ctx.arrive(task, delta, n)
    return ctx


def test_zero_server_epochs_is_fedavg_bit_for_bit_with_the_same_cohorts():
    runs = []
    for strategy in (
        FedAvg(FedAvgConfig(clients_per_round=3), seed=5),
        FedLAW(FedLAWConfig(clients_per_round=3, server_epochs=0), seed=5),
    ):
        ctx = _context(strategy, clients=7)
        strategy.on_start()
        generator = torch.Generator().manual_seed(2)
        for _ in range(3):
            for task in [t for t in ctx.tasks if t.version == ctx.model.version]:
                n = int(torch.randint(1, 500, (), generator=generator))
                ctx.arrive(task, torch.randn(15, generator=generator), n)
        runs.append(ctx)
    fedavg, fedlaw = runs
    assert [(t.client_id, t.seed) for t in fedavg.tasks] == [
        (t.client_id, t.seed) for t in fedlaw.tasks
    ]
    for a, b in zip(fedavg.history, fedlaw.history, strict=True):
        assert torch.equal(a.params, b.params)
    assert fedlaw.infos[0]["gamma"] == 1.0
    assert "proxy_loss" not in fedlaw.infos[0]


@pytest.mark.parametrize("parameterization", ["exp", "quad"])
def test_learned_weights_beat_fedavg_on_the_proxy_loss(parameterization):
    """Client 0 moves toward the labelling classifier, client 1 (three times the data) away
    from it: FedAvg follows client 1; FedLAW shifts lambda to client 0."""
    proxy = _proxy()
    good, bad = 2 * _true_params(), -2 * _true_params()
    config = FedLAWConfig(
        clients_per_round=2, server_lr=0.1, parameterization=parameterization, gamma_min=0.5
    )
    ctx = _one_round(FedLAW(config, seed=0), proxy, [good, bad], [10, 30])
    fedavg = (10 * good + 30 * bad) / 40
    learned = ctx.model.params
    info = ctx.infos[0]
    assert _proxy_loss(learned, proxy) < _proxy_loss(fedavg, proxy) - 0.1
    assert info["proxy_loss_fedavg"] == pytest.approx(_proxy_loss(fedavg, proxy), rel=1e-5)
    assert info["proxy_loss"] == pytest.approx(_proxy_loss(learned, proxy), rel=1e-5)
    lambdas = json.loads(info["lambdas"])
    client_of = {t.client_id: d for t, d in zip(ctx.tasks[:2], [good, bad], strict=True)}
    good_client = next(c for c, d in client_of.items() if d is good)
    assert lambdas[str(good_client)] > 0.25, "FedAvg's lambda for client 0 is 0.25"
    assert sum(lambdas.values()) == pytest.approx(1.0, abs=1e-5)
    assert 0.5 <= info["gamma"] <= 1.0
    combined = info["gamma"] * sum(lambdas[str(c)] * d for c, d in client_of.items())
    assert torch.allclose(learned, combined, atol=1e-4)


def test_gamma_is_held_in_its_bounds():
    """Random proxy labels: the loss falls as the weights shrink, so gamma runs to gamma_min."""
    deltas = [3 * _true_params(), 2 * _true_params()]
    config = FedLAWConfig(clients_per_round=2, server_lr=0.5, gamma_min=0.7, gamma_max=1.0)
    ctx = _one_round(FedLAW(config, seed=0), _proxy(noisy=True), deltas, [5, 5])
    assert ctx.infos[0]["gamma"] == pytest.approx(0.7, abs=1e-6)
    unbounded = FedLAWConfig(clients_per_round=2, server_lr=0.5, gamma_min=0.0, gamma_max=1.0)
    ctx = _one_round(FedLAW(unbounded, seed=0), _proxy(noisy=True), deltas, [5, 5])
    assert ctx.infos[0]["gamma"] < 0.7
    growth = FedLAWConfig(clients_per_round=2, server_lr=0.5, gamma_max=1.0)
    small = [0.1 * _true_params(), 0.2 * _true_params()]
    ctx = _one_round(FedLAW(growth, seed=0), _proxy(), small, [5, 5])
    assert ctx.infos[0]["gamma"] == pytest.approx(1.0, abs=1e-6), "growth is capped at 1"


def test_best_iterate_is_never_worse_than_fedavg_and_last_can_be():
    """Random proxy labels and tiny updates: FedAvg's model is already about as good as it gets,
    the last Adam iterate ends slightly worse, and `best` keeps FedAvg's model bit for bit."""
    deltas = [0.05 * _true_params(), -0.025 * _true_params()]
    outcomes = {}
    for select in ("best", "last"):
        config = FedLAWConfig(
            clients_per_round=2, server_lr=1.0, gamma_min=0.0, gamma_max=50.0, select=select
        )
        outcomes[select] = _one_round(FedLAW(config, seed=0), _proxy(noisy=True), deltas, [5, 5])
    fedavg = _one_round(FedAvg(FedAvgConfig(clients_per_round=2), 0), _proxy(), deltas, [5, 5])
    best, last = outcomes["best"].infos[0], outcomes["last"].infos[0]
    assert last["proxy_loss"] > last["proxy_loss_fedavg"]
    assert best["proxy_loss"] == best["proxy_loss_fedavg"] and best["gamma"] == 1.0
    assert torch.equal(outcomes["best"].model.params, fedavg.model.params)
    assert not torch.equal(outcomes["last"].model.params, fedavg.model.params)


def test_partial_cohort_weights_only_the_clients_that_returned_and_rounds_are_seeded():
    def run() -> ScriptedContext:
        config = FedLAWConfig(
            clients_per_round=3, round_timeout=4.0, min_fraction=0.5, server_lr=0.05
        )
        strategy = FedLAW(config, seed=3)
        ctx = _context(strategy, clients=3, proxy=_proxy())
        strategy.on_start()
        ctx.arrive(ctx.tasks[0], _true_params(), 10)
        ctx.arrive(ctx.tasks[2], -0.5 * _true_params(), 20)
        ctx.clock = 4.0
        strategy.on_timer("round-deadline-1")
        return ctx

    ctx = run()
    lambdas = json.loads(ctx.infos[0]["lambdas"])
    assert sorted(lambdas) == sorted(str(ctx.tasks[i].client_id) for i in (0, 2))
    assert ctx.infos[0]["participants"] == 2
    assert torch.equal(run().model.params, ctx.model.params)


def test_state_round_trip_resumes_identically():
    def fresh() -> tuple[FedLAW, ScriptedContext, list[dict[str, Any]]]:
        strategy = FedLAW(FedLAWConfig(clients_per_round=2, server_lr=0.05), seed=9)
        ctx = _context(strategy, clients=2, proxy=_proxy())
        return strategy, ctx, ctx.states

    def play(ctx: ScriptedContext, rounds: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        for _ in range(rounds):
            for task in [t for t in ctx.tasks if t.version == ctx.model.version]:
                ctx.arrive(task, torch.randn(15, generator=generator), 10 + task.client_id)

    strategy, ctx, states = fresh()
    strategy.on_start()
    play(ctx, 1, seed=0)
    play(ctx, 2, seed=1)
    restored, other, _ = fresh()
    restored.load_state_dict(json.loads(json.dumps(states[0])))
    other._model = ctx.history[1]
    other.history = ctx.history[:2]
    restored.on_start()
    play(other, 2, seed=1)
    assert torch.equal(other.model.params, ctx.model.params)
    assert other.infos[-1]["gamma"] == ctx.infos[-1]["gamma"]


def test_fedlaw_without_server_data_is_a_config_error():
    strategy = FedLAW(FedLAWConfig(), seed=0)
    layout = ModelLayout.of(_linear())
    with pytest.raises(ConfigError, match=r"server_data\.examples_per_class"):
        strategy.bind_resources(ServerResources(_linear, layout, None))
    with pytest.raises(ConfigError, match=r"server_data\.examples_per_class"):
        make_experiment(composed(*FAST, "strategy=fedlaw", "server_data.examples_per_class=0"))
    assert len(make_experiment(composed(*FAST, "strategy=fedlaw")).federation.server_part) == 100
    with pytest.raises(ConfigError, match="gamma_max"):
        parse_experiment(composed(*FAST, "strategy=fedlaw", "strategy.gamma_max=0.9"))


def test_server_examples_are_carved_per_class_before_partitioning():
    base = build(ExperimentConfig, composed(*FAST))
    carved = build(ExperimentConfig, composed(*FAST, "server_data.examples_per_class=7"))
    federation = make_federation(carved)
    labels = federation.dataset.train.labels()
    server = federation.server_part
    assert np.bincount(labels[server]).tolist() == [7] * 10
    clients = np.concatenate(federation.train_parts + federation.holdout_parts)
    assert not np.intersect1d(server, clients).size
    assert np.array_equal(np.sort(np.concatenate([server, clients])), np.arange(len(labels)))
    assert len(server_data(carved, federation) or []) == 70

    plain = make_federation(base)
    spec = base.partition
    parts = partition(
        labels,
        base.num_clients,
        spec.scheme,
        seed=base.seed,
        alpha=spec.alpha,
        shards_per_client=spec.shards_per_client,
        min_size=spec.min_size,
    )
    train, holdout = holdout_split(parts, spec.holdout, seed=base.seed + 1)
    assert all(np.array_equal(a, b) for a, b in zip(plain.train_parts, train, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(plain.holdout_parts, holdout, strict=True))
    assert not len(plain.server_part) and server_data(base, plain) is None


def test_natural_clients_lose_only_the_carved_examples():
    config = build(
        ExperimentConfig,
        composed("+experiment=heart", "server_data.examples_per_class=5", "output.progress=off"),
    )
    federation = make_federation(config)
    natural = federation.dataset.natural_clients
    assert natural is not None
    server = set(federation.server_part.tolist())
    assert len(server) == 10
    for client, part in enumerate(federation.train_parts):
        assert set(part.tolist()) == set(natural[client].tolist()) - server


def test_server_data_from_a_file(tmp_path):
    path = tmp_path / "proxy.npz"
    x = np.random.default_rng(0).standard_normal((12, 20)).astype(np.float32)
    np.savez(path, x=x, y=np.arange(12) % 10)
    config = build(ExperimentConfig, composed(*FAST, f"server_data.path={path}"))
    proxy = server_data(config, make_federation(config))
    assert proxy is not None and torch.equal(proxy.x, torch.from_numpy(x))
    np.savez(path, x=x[:, :5], y=np.arange(12) % 10)
    with pytest.raises(ConfigError, match=r"server_data\.path"):
        server_data(config, make_federation(config))
    with pytest.raises(ConfigError, match=r"server_data\.path"):
        build(
            ExperimentConfig,
            composed(*FAST, f"server_data.path={path}", "server_data.examples_per_class=3"),
        )


def test_simulation_fedlaw_zero_epochs_matches_fedavg_and_learns_otherwise(tmp_path):
    common = [*FAST, "server_data.examples_per_class=5", "output.plot=false"]
    fedavg = simulate(composed(*common), None)
    zero = simulate(composed(*common, "strategy=fedlaw", "strategy.server_epochs=0"), None)
    assert zero["model_sha256"] == fedavg["model_sha256"]
    learned = simulate(composed(*common, "strategy=fedlaw", "strategy.server_lr=0.05"), tmp_path)
    assert learned["model_sha256"] != fedavg["model_sha256"]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(row["proxy_loss"] <= row["proxy_loss_fedavg"] for row in rows)
    models = [
        json.loads(line)
        for line in (tmp_path / "ledger.jsonl").read_text().splitlines()
        if '"model"' in line
    ]
    assert len(models) == 3 and all(len(json.loads(m["lambdas"])) == 5 for m in models)
