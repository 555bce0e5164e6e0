"""FedBuff: K arrivals per model version, staleness-weighted, and its checkpointable buffer."""

from __future__ import annotations

import json

import pytest
import torch

from fedcore.config import TrainingConfig
from fedcore.payloads import DenseDelta
from fedcore.records import Update
from fedcore.server.experiment import parse_experiment
from fedcore.server.simulation import simulate
from fedcore.state_files import pack, unpack
from fedcore.strategies.base import Arrival
from fedcore.strategies.fedbuff import FedBuff, FedBuffConfig
from fedcore.strategies.staleness import StalenessConfig
from fedcore.typed_config import ConfigError
from tests.conftest import FAST, composed
from tests.harness import ScriptedContext

P = 33


def _deltas(n: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(P, generator=generator) for _ in range(n)]


def _fedbuff(alpha: float = 0.8) -> tuple[FedBuff, ScriptedContext]:
    config = FedBuffConfig(
        clients_per_round=3,
        alpha=alpha,
        buffer_size=2,
        staleness=StalenessConfig("polynomial", a=0.5),
        training=TrainingConfig(local_steps=3),
    )
    strategy = FedBuff(config, seed=5)
    return strategy, ScriptedContext(strategy, torch.zeros(P), clients=4)


def test_every_k_arrivals_make_one_staleness_weighted_version():
    strategy, ctx = _fedbuff()
    strategy.on_start()
    first = list(ctx.tasks)
    assert len(first) == 3 and all(t.version == 0 and t.local_steps == 3 for t in first)
    d = _deltas(4)
    ctx.arrive(first[0], d[0])
    assert ctx.model.version == 0, "one arrival does not fill a buffer of two"
    ctx.arrive(first[1], d[1])
    assert ctx.model.version == 1 and ctx.infos[-1]["updates"] == 2
    version1 = 0.8 * (d[0] + d[1]) / 2
    assert torch.allclose(ctx.model.params, version1, atol=1e-6)
    # first[2] trained on version 0 (staleness 1); the next task trained on version 1 (0).
    ctx.arrive(first[2], d[2])
    fresh = next(t for t in ctx.tasks if t.version == 1)
    ctx.arrive(fresh, d[3])
    assert ctx.model.version == 2
    expected = version1 + 0.8 * (2**-0.5 * d[2] + d[3]) / 2
    assert torch.allclose(ctx.model.params, expected, atol=1e-6)


def test_partial_buffer_round_trips_through_state_dict():
    strategy, ctx = _fedbuff()
    strategy.on_start()
    d = _deltas(2, seed=3)
    ctx.arrive(ctx.tasks[0], d[0])
    tensors: dict[str, torch.Tensor] = {}
    state = unpack(json.loads(json.dumps(pack(strategy.state_dict(), tensors))), tensors)
    clone, clone_ctx = _fedbuff()
    clone.load_state_dict(state)
    assert clone.rng.bit_generator.state == strategy.rng.bit_generator.state
    second = ctx.tasks[1]
    for s, c in ((strategy, ctx), (clone, clone_ctx)):
        update = Update(second.client_id, 0, 10, DenseDelta(d[1]))
        s.on_update(Arrival(update, c.history[0], 0))
    assert clone_ctx.model.version == ctx.model.version == 1
    assert torch.equal(clone_ctx.model.params, ctx.model.params)
    assert torch.allclose(ctx.model.params, 0.8 * (d[0] + d[1]) / 2, atol=1e-6)


def test_buffer_size_must_be_positive():
    data = composed(*FAST, "strategy=fedbuff", "strategy.buffer_size=0")
    with pytest.raises(ConfigError, match=r"strategy\.buffer_size: must be >= 1"):
        parse_experiment(data)


def test_simulated_fedbuff_publishes_one_version_per_k_accepted_updates(tmp_path):
    summary = simulate(
        composed(*FAST, "strategy=fedbuff", "strategy.buffer_size=3", "rounds=4"), tmp_path
    )
    assert summary["versions"] == 4
    assert summary["ledger"]["accepted"] >= 12
    assert summary["final"]["test_accuracy"] > 0.3
