"""FedAMD: client-side anchor and miner work against independent autograd computations, the
strategy driven event by event, the conformance tests of the method's invariants, and whole runs."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
import torch
from torch import nn
from torch.func import functional_call

from fedcore.clients.sgd import SGDParams, task_batches
from fedcore.clients.techniques.fedamd import DIRECTION, AnchorMemory
from fedcore.clients.trainer import LocalTrainer
from fedcore.config import TrainingConfig
from fedcore.data.split import Split
from fedcore.records import Task
from fedcore.server.experiment import make_experiment, parse_experiment
from fedcore.server.simulation import Simulation, simulate
from fedcore.state_files import pack, unpack
from fedcore.strategies.base import GlobalModel
from fedcore.strategies.fedamd import FedAMD, FedAMDConfig
from fedcore.strategies.server_step import ServerStepConfig
from fedcore.typed_config import ConfigError
from tests.conftest import FAST, composed
from tests.harness import ScriptedContext

ANCHOR, MINER = "anchor", "miner"
P = 64


def _module() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))


def _data(n: int = 90, seed: int = 3) -> Split:
    generator = torch.Generator().manual_seed(seed)
    return Split(
        torch.randn(n, 5, generator=generator), torch.randint(0, 3, (n,), generator=generator)
    )


@pytest.fixture
def trainer() -> LocalTrainer:
    torch.manual_seed(0)
    return LocalTrainer(_module)


def _start(trainer: LocalTrainer) -> tuple[torch.Tensor, torch.Tensor]:
    return trainer.bound.params.clone(), trainer.bound.read_buffers().clone()


def _reference_gradient(
    trainer: LocalTrainer, flat: torch.Tensor, data: Split, rows: torch.Tensor, wd: float = 0.0
) -> torch.Tensor:
    """Gradient of the mean cross-entropy (+ wd/2 |w|^2) over `rows`, by plain autograd on a
    fresh module fed the parameters as a dict (no flat binding, no chunking)."""
    spec = trainer.bound.layout.params
    named = {k: v.clone().requires_grad_(True) for k, v in spec.unflatten(flat.clone()).items()}
    x, y = data.batch(rows)
    loss = nn.functional.cross_entropy(functional_call(_module(), named, (x,)), y)
    grads = torch.autograd.grad(loss, list(named.values()))
    flat_grad = spec.flatten(dict(zip(named, grads, strict=True)))
    return flat_grad + wd * flat


def _task(technique: str, steps: int, **hyper: float) -> Task:
    base = {"batch_size": 8.0, "weight_decay": 0.0}
    if technique != ANCHOR:
        base.update(lr=0.1, momentum=0.0, epochs=0.0)
    return Task(
        client_id=4,
        version=7,
        technique=technique,
        local_steps=steps,
        hyper={**base, **hyper},
        seed=11,
    )


# -- client side ------------------------------------------------------------------------------
def test_first_miner_step_is_minus_lr_times_the_direction(trainer: LocalTrainer) -> None:
    params, buffers = _start(trainer)
    v = torch.randn(params.numel(), generator=torch.Generator().manual_seed(1))
    task = replace(_task(MINER, 1), extras={DIRECTION: v})
    update = trainer.run(task, params, buffers, _data())
    assert torch.allclose(update.payload.values, -0.1 * v, atol=1e-7, rtol=1e-6)
    assert update.metrics["grad_examples"] == 0, "step 0 needs no gradient"


def test_miner_steps_follow_the_recursion_with_the_same_batch_at_both_iterates(
    trainer: LocalTrainer,
) -> None:
    params, buffers = _start(trainer)
    data = _data()
    v = 0.1 * torch.randn(params.numel(), generator=torch.Generator().manual_seed(2))
    task = replace(_task(MINER, 3, weight_decay=0.01), extras={DIRECTION: v})
    update = trainer.run(task, params, buffers, data)
    batches = task_batches(task, SGDParams(batch_size=8), len(data))
    xs, d = [params.clone()], v.clone()
    xs.append(xs[0] - 0.1 * d)
    for k in (1, 2):
        current = _reference_gradient(trainer, xs[k], data, batches[k], wd=0.01)
        previous = _reference_gradient(trainer, xs[k - 1], data, batches[k], wd=0.01)
        d = d + current - previous
        xs.append(xs[k] - 0.1 * d)
    assert torch.allclose(update.payload.values, xs[3] - xs[0], atol=1e-6)
    assert update.local_steps == 3
    assert update.metrics["grad_examples"] == 2 * 2 * 8, "two passes for each step after the first"


def test_miner_without_a_direction_is_plain_local_sgd(trainer: LocalTrainer) -> None:
    params, buffers = _start(trainer)
    data = _data()
    sgd = trainer.run(_task("sgd", 5), params, buffers, data)
    miner = trainer.run(_task(MINER, 5), params, buffers, data)
    assert torch.equal(sgd.payload.values, miner.payload.values)


def test_anchor_uploads_the_mean_gradient_over_its_random_large_batch(
    trainer: LocalTrainer,
) -> None:
    params, buffers = _start(trainer)
    data = _data(n=2500)
    whole = trainer.run(_task(ANCHOR, 1, weight_decay=0.02), params, buffers, data)
    expected = _reference_gradient(trainer, params, data, torch.arange(len(data)), wd=0.02)
    assert torch.allclose(whole.payload.values, expected, atol=1e-6)
    assert whole.num_examples == 2500 and whole.buffers is None
    assert whole.local_steps == 313, "ceil(2500 / 8) minibatches of work"

    part = trainer.run(_task(ANCHOR, 1, anchor_batch=40.0), params, buffers, data)
    rows = torch.randperm(len(data), generator=torch.Generator().manual_seed(11))[:40]
    assert torch.allclose(
        part.payload.values, _reference_gradient(trainer, params, data, rows), atol=1e-6
    )
    other = trainer.run(
        replace(_task(ANCHOR, 1, anchor_batch=40.0), seed=12), params, buffers, data
    )
    assert not torch.allclose(other.payload.values, part.payload.values), "batch is random"


def test_client_kept_anchor_uploads_differences_relative_to_the_counted_gradient(
    trainer: LocalTrainer,
) -> None:
    params, buffers = _start(trainer)
    data = _data()

    def anchor(version: int, base: int, shift: float) -> torch.Tensor:
        task = replace(_task(ANCHOR, 1, client_store=1.0, anchor_base=float(base)), version=version)
        return trainer.run(task, params + shift, buffers, data).payload.values

    g = {
        v: _reference_gradient(trainer, params + s, data, torch.arange(len(data)))
        for v, s in ((1, 0.0), (2, 0.1), (3, 0.2))
    }
    assert torch.allclose(anchor(1, -1, 0.0), g[1], atol=1e-6)
    assert torch.allclose(anchor(2, 1, 0.1), g[2] - g[1], atol=1e-6)
    # The upload of version 2 was lost: the server still counts version 1.
    assert torch.allclose(anchor(3, 1, 0.2), g[3] - g[1], atol=1e-6)
    assert trainer.technique(ANCHOR).memory.held(4) == [1, 3]
    with pytest.raises(RuntimeError, match="gradient_store=server"):
        AnchorMemory().difference(0, 5, 6, torch.zeros(3))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_anchor_and_miner_on_cuda_give_the_cpu_updates_up_to_rounding(
    trainer: LocalTrainer,
) -> None:
    params, buffers = _start(trainer)
    data = _data(n=1500)
    on_gpu = LocalTrainer(_module, device="cuda")
    v = 0.1 * torch.randn(params.numel(), generator=torch.Generator().manual_seed(4))
    tasks = [
        _task(ANCHOR, 1, anchor_batch=700.0),
        replace(_task(MINER, 6), extras={DIRECTION: v}),
    ]
    for task in tasks:
        cpu = trainer.run(task, params, buffers, data).payload.values
        gpu = on_gpu.train(task, params, buffers, data).payload.values
        assert gpu.device.type == "cpu"
        assert torch.allclose(gpu, cpu, atol=1e-5, rtol=0)


# -- strategy ---------------------------------------------------------------------------------
def _strategy(
    clients: int = 6, per_round: int = 4, **options: Any
) -> tuple[FedAMD, ScriptedContext]:
    config = FedAMDConfig(clients_per_round=per_round, training=TrainingConfig(lr=0.1), **options)
    strategy = FedAMD(config, seed=5)
    return strategy, ScriptedContext(strategy, torch.randn(P), clients)


def _vectors(n: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(P, generator=generator) for _ in range(n)]


def test_all_anchor_round_leaves_the_model_unchanged() -> None:
    strategy, ctx = _strategy(anchor_probability=1.0)
    start = ctx.model
    strategy.on_start()
    assert [t.technique for t in ctx.tasks] == [ANCHOR] * 4
    for task, g in zip(list(ctx.tasks), _vectors(4, 0), strict=True):
        ctx.arrive(task, g)
    assert ctx.model.version == 1
    assert torch.equal(ctx.model.params, start.params)
    assert torch.equal(ctx.model.buffers, start.buffers)
    assert ctx.infos[0] == {
        "round": 1,
        "participants": 4,
        "shrunk": 0,
        "anchors": 4,
        "miners": 0,
    }


def test_anchor_gradient_affects_the_direction_only_from_the_next_round_on() -> None:
    strategy, ctx = _strategy(clients=6, per_round=4, anchor_probability=0.5)
    strategy.on_start()
    stored: dict[int, torch.Tensor] = {}
    seen_mixed = False
    for round_ in range(6):
        tasks = ctx.tasks[-4:]
        expected = torch.stack(list(stored.values())).mean(0) if stored else None
        anchors = [t for t in tasks if t.technique == ANCHOR]
        miners = [t for t in tasks if t.technique == MINER]
        for miner in miners:
            if expected is None:
                assert DIRECTION not in miner.extras
            else:
                assert torch.allclose(miner.extras[DIRECTION], expected, atol=1e-6)
            assert miner.hyper["momentum"] == 0.0
        seen_mixed |= bool(anchors) and bool(miners)
        start = ctx.model.params
        deltas = _vectors(4, 10 + round_)
        for task, vector in zip(tasks, deltas, strict=True):
            if task.technique == ANCHOR:
                stored[task.client_id] = vector
            ctx.arrive(task, vector)
        miner_deltas = [v for t, v in zip(tasks, deltas, strict=True) if t.technique == MINER]
        if miner_deltas:
            assert torch.allclose(ctx.model.params, start + torch.stack(miner_deltas).mean(0))
        else:
            assert torch.equal(ctx.model.params, start)
    assert seen_mixed, "the seed should give at least one round with anchors and miners"
    assert strategy.counted.keys() == stored.keys()


def test_periodic_anchor_rounds_and_the_server_learning_rate() -> None:
    strategy, ctx = _strategy(
        clients=4, per_round=2, anchor_period=3, server_step=ServerStepConfig(lr=0.5)
    )
    strategy.on_start()
    kinds = []
    for round_ in range(6):
        tasks = ctx.tasks[-2:]
        kinds.append({t.technique for t in tasks})
        start = ctx.model.params
        deltas = _vectors(2, round_)
        for task, delta in zip(tasks, deltas, strict=True):
            ctx.arrive(task, delta)
        if MINER in kinds[-1]:
            assert torch.allclose(ctx.model.params, start + 0.5 * (deltas[0] + deltas[1]) / 2)
    anchor, miner = {ANCHOR}, {MINER}
    assert kinds == [anchor, miner, miner, anchor, miner, miner]


def test_init_round_collects_every_client_before_the_first_round() -> None:
    strategy, ctx = _strategy(clients=5, per_round=2, anchor_probability=0.0, init_round=True)
    strategy.on_start()
    assert sorted(t.client_id for t in ctx.tasks) == [0, 1, 2, 3, 4]
    assert all(t.technique == ANCHOR for t in ctx.tasks)
    gradients = _vectors(5, 3)
    for task, g in zip(list(ctx.tasks), gradients, strict=True):
        assert strategy.round == 0
        ctx.arrive(task, g)
    assert ctx.model.version == 0, "the initial phase publishes nothing"
    assert [t.technique for t in ctx.tasks[5:]] == [MINER] * 2
    mean = torch.stack(gradients).mean(0)
    assert all(torch.allclose(t.extras[DIRECTION], mean, atol=1e-6) for t in ctx.tasks[5:])


def test_client_store_keeps_only_the_running_sum_and_names_the_base_version() -> None:
    strategy, ctx = _strategy(clients=2, per_round=2, anchor_period=2, gradient_store="client")
    strategy.on_start()
    first = _vectors(2, 0)
    assert [t.hyper["anchor_base"] for t in ctx.tasks] == [-1.0, -1.0]
    for task, g in zip(list(ctx.tasks), first, strict=True):
        ctx.arrive(task, g)
    for task in list(ctx.tasks[2:]):
        ctx.arrive(task, torch.zeros(P))
    assert [t.hyper["anchor_base"] for t in ctx.tasks[4:]] == [0.0, 0.0]
    differences = _vectors(2, 1)
    for task, diff in zip(list(ctx.tasks[4:]), differences, strict=True):
        ctx.arrive(task, diff)
    assert strategy.stored == {}
    expected = (first[0] + first[1] + differences[0] + differences[1]) / 2
    assert torch.allclose(ctx.tasks[-1].extras[DIRECTION], expected, atol=1e-6)


class _CheckpointingContext(ScriptedContext):
    """Saves the strategy state at each publication, as the server's checkpoints do."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.saved: list[str] = []
        self.tensors: list[dict[str, torch.Tensor]] = []
        self.idle_at_save: list[set[int]] = []

    def publish(self, params: torch.Tensor, buffers: torch.Tensor, **info: Any) -> GlobalModel:
        model = super().publish(params, buffers, **info)
        tensors: dict[str, torch.Tensor] = {}
        self.saved.append(json.dumps(pack(self.strategy.state_dict(), tensors)))
        self.tensors.append(tensors)
        self.idle_at_save.append(set(self.idle))
        return model


def _play(ctx: ScriptedContext, rounds: int, seed: int) -> None:
    for round_ in range(rounds):
        for task, vector in zip(ctx.tasks[-3:], _vectors(3, seed + round_), strict=True):
            ctx.arrive(task, vector)


@pytest.mark.parametrize("store", ["server", "client"])
def test_state_dict_round_trip_resumes_identically(store: str) -> None:
    config = FedAMDConfig(clients_per_round=3, anchor_probability=0.4, gradient_store=store)
    first = FedAMD(config, seed=8)
    ctx = _CheckpointingContext(first, torch.randn(P), 5)
    first.on_start()
    _play(ctx, 3, seed=0)
    assert first.counted, "anchors should have reported by now"
    resumed = FedAMD(config, seed=99)
    resumed.load_state_dict(unpack(json.loads(ctx.saved[2]), ctx.tensors[2]))
    assert torch.equal(resumed.grad_sum, first.grad_sum)
    assert resumed.stored.keys() == first.stored.keys()
    assert all(torch.equal(resumed.stored[c], first.stored[c]) for c in first.stored)
    again = ScriptedContext(resumed, ctx.model.params, 5)
    again._model = ctx.model
    again.history = ctx.history[:]
    again.idle = ctx.idle_at_save[2]
    resumed.on_start()
    again.idle = set(range(5)) - {t.client_id for t in again.tasks}
    _play(ctx, 2, seed=50)
    _play(again, 2, seed=50)
    assert [(t.client_id, t.technique, t.seed) for t in again.tasks] == [
        (t.client_id, t.technique, t.seed) for t in ctx.tasks[9:]
    ]
    assert torch.equal(again.model.params, ctx.model.params)


def test_bad_options_are_config_errors_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"strategy\.anchor_probability"):
        parse_experiment(composed(*FAST, "strategy=fedamd", "strategy.anchor_probability=1.5"))
    with pytest.raises(ConfigError, match=r"strategy\.gradient_store"):
        parse_experiment(composed(*FAST, "strategy=fedamd", "strategy.gradient_store=disk"))


# -- whole runs -------------------------------------------------------------------------------
def _final(*overrides: str) -> torch.Tensor:
    config = composed(*FAST, "training.momentum=0.0", *overrides)
    return Simulation(make_experiment(config), config).run().final.params


def test_fedamd_with_p_zero_is_uniform_fedavg_bit_for_bit() -> None:
    preset = composed("strategy=fedamd")["training"]  # FedAMD's preset trains its own way
    same = [f"training.{key}={preset[key]}" for key in ("lr", "batch_size")]
    fedavg = _final("strategy=fedavg", "strategy.weighting=uniform", "strategy.norm_bound=0", *same)
    fedamd = _final("strategy=fedamd", "strategy.anchor_probability=0.0")
    assert torch.equal(fedamd, fedavg)
    assert not torch.equal(_final("strategy=fedamd"), fedavg)


def test_client_and_server_stores_give_the_same_run() -> None:
    server = _final("strategy=fedamd", "strategy.anchor_probability=0.5", "rounds=4")
    client = _final(
        "strategy=fedamd",
        "strategy.anchor_probability=0.5",
        "rounds=4",
        "strategy.gradient_store=client",
    )
    assert torch.allclose(server, client, atol=1e-5)


def test_fedamd_simulation_writes_its_run_and_is_reproducible(tmp_path) -> None:
    overrides = (*FAST, "strategy=fedamd", "strategy.anchor_batch=50", "rounds=4")
    summary = simulate(composed(*overrides), tmp_path / "a")
    again = simulate(composed(*overrides), tmp_path / "b")
    assert summary["versions"] == 4
    assert (tmp_path / "a" / "model.fct").read_bytes() == (
        tmp_path / "b" / "model.fct"
    ).read_bytes()
    assert again["final"] == summary["final"]


def test_the_simulated_clock_charges_miners_two_passes_per_step_and_anchors_their_batch(
    trainer: LocalTrainer,
):
    miner = Task(0, 0, MINER, 10, {"batch_size": 32}, {DIRECTION: torch.zeros(3)})
    assert trainer.passes(miner, 1000) == 19
    assert trainer.passes(replace(miner, extras={}), 1000) == 10
    anchor = Task(0, 0, ANCHOR, 10, {"batch_size": 32, "anchor_batch": 320})
    assert trainer.passes(anchor, 1000) == 10
    assert trainer.passes(replace(anchor, hyper={"batch_size": 32}), 640) == 20
