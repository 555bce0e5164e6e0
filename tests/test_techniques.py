"""Client techniques and update transforms: typed parameters that refuse what they do not know,
a technique added as a plug-in, client state that survives a restart, clip and top-k."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
import torch

from fedcore.clients.techniques import TaskError
from fedcore.clients.trainer import LocalTrainer, expected_payload
from fedcore.clients.transforms import TransformContext
from fedcore.clients.transforms.clip import Clip, ClipOptions
from fedcore.clients.transforms.topk import TopK, TopKOptions
from fedcore.data import load_dataset
from fedcore.models import build_model
from fedcore.payloads import DenseDelta, SparseDelta
from fedcore.records import Task, TransformSpec, Update
from fedcore.server.simulation import simulate
from fedcore.typed_config import ConfigError
from tests.conftest import FAST, composed

SGD = {"lr": 0.1, "batch_size": 8.0}


def _sized(numel: int) -> TransformContext:
    """A transform's context for a model of `numel` parameters (no transform here draws noise)."""
    return TransformContext(numel, torch.Generator)


@pytest.mark.parametrize(
    ("task", "reason"),
    [
        (Task(0, 0, hyper={"lr": 0.1, "lrr": 0.2}), r"task.hyper\[sgd\].lrr: unknown parameter"),
        (Task(0, 0, hyper={"batch_size": 3.5}), r"batch_size: must be an integer, got 3.5"),
        (
            Task(0, 0, technique="fedld", hyper={"margin_per_sample": 0.5}),
            r"margin_per_sample: must be 0 or 1",
        ),
        (Task(0, 0, hyper={"lr": 0.0}), r"task.hyper\[sgd\].lr: must be finite and > 0"),
        (Task(0, 0, hyper={"lr": float("inf")}), r"lr: must be finite and > 0"),
        (Task(0, 0, technique="fedprox", hyper={"prox_mu": -1.0}), r"prox_mu: must be >= 0"),
        (Task(0, 0, technique="nope"), r"task.technique: unknown client technique 'nope'"),
        (Task(0, 0, transforms=(TransformSpec("nope"),)), r"unknown update transform 'nope'"),
        (
            Task(0, 0, transforms=(TransformSpec("clip", {"max_norm": -1.0}),)),
            r"task.transforms\[clip\].max_norm: must be finite and > 0",
        ),
        (
            Task(0, 0, transforms=(TransformSpec("topk"), TransformSpec("topk"))),
            r"takes \['dense'\] payloads, the update is sparse",
        ),
        (
            Task(0, 0, extras={"direction": torch.zeros(3)}),
            r"task.extras.direction: technique 'sgd' takes no such tensor",
        ),
        (Task(0, 0, download="masked"), r"task.extras.mask: a masked download needs the mask"),
    ],
)
def test_tasks_a_client_cannot_run_are_refused_naming_the_key(task, reason):
    with pytest.raises(TaskError, match=reason):
        expected_payload(task)


def test_expected_payload_follows_the_technique_and_its_transforms():
    assert expected_payload(Task(0, 0, hyper=SGD)) == "dense"
    topk = (TransformSpec("clip", {"max_norm": 1.0}), TransformSpec("topk", {"fraction": 0.1}))
    assert expected_payload(Task(0, 0, hyper=SGD, transforms=topk)) == "sparse"
    assert expected_payload(Task(0, 0, technique="evaluate")) == "none"
    miner = Task(0, 0, technique="miner", extras={"direction": torch.zeros(3)})
    assert expected_payload(miner) == "dense"


def test_a_misspelled_training_option_stops_the_run_naming_the_key():
    config = composed(*FAST, "+training.options.lrr=0.1")
    with pytest.raises(ConfigError, match=r"task.hyper\[sgd\].lrr: unknown parameter"):
        simulate(config, None)
    with pytest.raises(ConfigError, match=r"plugins\[0\]: cannot import 'tests.plugins.nope'"):
        simulate(composed(*FAST, "plugins=[tests.plugins.nope]"), None)


def test_a_strategy_given_a_payload_it_cannot_take_stops_the_run():
    config = composed(
        *FAST, "plugins=[tests.plugins.payload_probe]", "training.technique=seed_probe"
    )
    with pytest.raises(ConfigError, match="strategy fedavg takes dense or sparse payloads"):
        simulate(config, None)


@pytest.fixture(scope="module")
def trainer_and_data():
    dataset = load_dataset("synthetic", num_train=300, num_test=10)
    return LocalTrainer(partial(build_model, "mlp", dataset.info)), dataset.train


def test_a_plugin_technique_runs_in_the_shared_loop(trainer_and_data):
    import tests.plugins.sign_sgd  # noqa: F401  (registers sign_sgd, as `plugins=` does)

    trainer, data = trainer_and_data
    params, buffers = trainer.bound.params.clone(), trainer.bound.buffers.clone()
    task = Task(0, 0, technique="sign_sgd", local_steps=3, hyper=SGD, seed=4)
    delta = trainer.run(task, params, buffers, data).payload.values
    steps = delta / 0.1
    assert torch.allclose(steps, steps.round(), atol=1e-4), "each step moves +-lr per entry"
    assert steps.abs().max() == pytest.approx(3, abs=1e-4) and delta.abs().sum() > 0
    plain = trainer.run(replace(task, technique="sgd"), params, buffers, data).payload.values
    assert not torch.allclose(plain, delta)


def test_a_plugin_technique_runs_in_simulation(tmp_path):
    overrides = (*FAST, "plugins=[tests.plugins.sign_sgd]", "training.technique=sign_sgd")
    summary = simulate(composed(*overrides), tmp_path / "sign")
    plain = simulate(composed(*FAST), tmp_path / "plain")
    assert summary["ledger"]["accepted"] == 15 and summary["versions"] == 3
    assert summary["model_sha256"] != plain["model_sha256"]
    assert summary["final"]["test_accuracy"] > 0.3


def test_technique_state_survives_a_restart(trainer_and_data):
    trainer, data = trainer_and_data
    params, buffers = trainer.bound.params.clone(), trainer.bound.buffers.clone()
    anchor = {"batch_size": 8.0, "client_store": 1.0, "anchor_base": -1.0}
    first = trainer.run(Task(2, 1, technique="anchor", hyper=anchor), params, buffers, data)
    restarted = LocalTrainer(trainer.bound.module.__class__)  # any module: state is by name
    restarted.load_state_dict(trainer.state_dict())
    assert restarted.technique("anchor").memory.held(2) == [1]
    assert set(trainer.state_dict()) == {"anchor"}, "stateless techniques save nothing"
    assert first.payload is not None


def _update(payload) -> Update:
    return Update(client_id=0, base_version=0, num_examples=5, payload=payload)


def test_clip_bounds_the_norm_and_leaves_small_and_zero_deltas_alone():
    clip, options = Clip(), ClipOptions(max_norm=1.0)
    big = torch.randn(10_000, generator=torch.Generator().manual_seed(1))
    big *= 100 / big.norm()
    clipped = clip.apply(_update(DenseDelta(big)), options, _sized(big.numel())).payload.values
    assert clipped.norm() <= 1.0 * (1 + 1e-6)
    assert torch.allclose(clipped * 100, big, rtol=1e-5), "direction kept"
    small = big * (0.5 / big.norm())
    assert (
        clip.apply(_update(DenseDelta(small)), options, _sized(small.numel())).payload.values
        is small
    )
    zero = torch.zeros(10)
    assert torch.equal(clip.apply(_update(DenseDelta(zero)), options, 10).payload.values, zero)
    sparse = SparseDelta(torch.tensor([30.0, 40.0]), indices=torch.tensor([1, 5]))
    out = clip.apply(_update(sparse), ClipOptions(max_norm=5.0), 10).payload
    assert torch.allclose(out.values, torch.tensor([3.0, 4.0])) and out.indices is sparse.indices


@pytest.mark.parametrize(("fraction", "encoding"), [(0.1, "mask"), (0.01, "indices")])
def test_topk_keeps_the_largest_entries_in_the_smaller_encoding(fraction, encoding):
    values = torch.randn(1000, generator=torch.Generator().manual_seed(2))
    out = TopK().apply(_update(DenseDelta(values)), TopKOptions(fraction), _sized(1000)).payload
    assert isinstance(out, SparseDelta)
    keep = int(fraction * 1000)
    assert (out.mask is not None) == (encoding == "mask") and out.count == keep
    chosen = set(torch.argsort(values.abs(), descending=True)[:keep].tolist())
    assert set(out.positions(1000).tolist()) == chosen
    out.check(1000, torch.float32)
    dense = out.dense(1000)
    assert torch.equal(dense[sorted(chosen)], values[sorted(chosen)])
    assert int((dense != 0).sum()) == keep


def test_the_documented_plugin_command_runs_from_the_repository(tmp_path):
    """`fedcore sim plugins=[tests.plugins.sign_sgd] training.technique=sign_sgd`
    (docs/client-techniques.md), through the installed console script, which finds the plug-in
    in the current directory."""
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "fedcore"),
            "sim",
            "plugins=[tests.plugins.sign_sgd]",
            "training.technique=sign_sgd",
            *FAST,
            "rounds=1",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "summary.json").exists()


@pytest.mark.parametrize(
    "overrides",
    [
        ["training.transforms=[{name: clip, max_norm: 5.0}, {name: topk, fraction: 0.05}]"],
        ["strategy=fedbuff", "strategy.server_step.name=adam", "strategy.server_step.lr=0.01"],
        ["strategy=fedcompass", "strategy.server_step.name=momentum"],
        ["strategy=fedyogi"],
        ["strategy=fedadagrad"],
    ],
)
def test_the_documented_overrides_run(overrides):
    """The other commands of docs/client-techniques.md, for one version."""
    compass = ["strategy.min_local_steps=2", "strategy.max_local_steps=5"]
    extra = compass if "strategy=fedcompass" in overrides else []
    summary = simulate(composed(*FAST, *overrides, *extra, "rounds=1"), None)
    assert summary["versions"] == 1
