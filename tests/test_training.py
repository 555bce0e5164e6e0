"""Local training's memory reuse changes where the delta lives, never its bits."""

from __future__ import annotations

from functools import partial

import torch

from fedcore.clients.sgd import SGDParams, cross_entropy, task_batches
from fedcore.clients.trainer import LocalTrainer
from fedcore.data import load_dataset
from fedcore.models import build_model
from fedcore.records import Task


def test_a_reused_params_buffer_holds_the_same_delta_bit_for_bit() -> None:
    dataset = load_dataset("synthetic", num_train=300, num_test=10)
    trainer = LocalTrainer(partial(build_model, "mlp", dataset.info))
    params, buffers = trainer.bound.params.clone(), trainer.bound.buffers.clone()
    task = Task(client_id=0, version=0, local_steps=5, hyper={"batch_size": 32, "lr": 0.05}, seed=4)
    fresh = trainer.run(task, params, buffers, dataset.train)
    assert fresh.payload.values.data_ptr() != params.data_ptr()
    owned = params.clone()
    reused = trainer.run(task, owned, buffers, dataset.train, reuse_params=True)
    assert reused.payload.values.data_ptr() == owned.data_ptr()
    assert torch.equal(reused.payload.values, fresh.payload.values)
    assert fresh.payload.values.abs().sum() > 0


def test_training_from_the_bound_storage_itself_still_measures_the_move() -> None:
    dataset = load_dataset("synthetic", num_train=300, num_test=10)
    trainer = LocalTrainer(partial(build_model, "mlp", dataset.info))
    expected_start = trainer.bound.params.clone()
    task = Task(client_id=0, version=0, local_steps=3, hyper={"batch_size": 32, "lr": 0.05}, seed=2)
    update = trainer.run(task, trainer.bound.params, trainer.bound.buffers, dataset.train)
    assert torch.equal(update.payload.values, trainer.bound.params - expected_start)
    assert update.payload.values.abs().sum() > 0


def test_local_sgd_takes_torch_sgds_steps_with_momentum_and_weight_decay() -> None:
    """The per-layer step (each layer's gradient as backward stored it, no flat temporary) is
    torch.optim.SGD's, bit for bit, on the same minibatches."""
    dataset = load_dataset("synthetic", num_train=300, num_test=10)
    build = partial(build_model, "mlp", dataset.info)
    hyper = {"batch_size": 32, "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3}
    task = Task(client_id=0, version=0, local_steps=6, hyper=hyper, seed=2)
    trainer = LocalTrainer(build)
    start, buffers = trainer.bound.params.clone(), trainer.bound.buffers.clone()
    update = trainer.run(task, start, buffers, dataset.train)

    reference = LocalTrainer(build)
    reference.bound.load(start, buffers)
    module = reference.bound.module
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    for indices in task_batches(task, SGDParams(**hyper), len(dataset.train)):
        x, y = dataset.train.batch(indices)
        optimizer.zero_grad(set_to_none=True)
        cross_entropy(module(x), y).backward()
        optimizer.step()
    moved = reference.bound.params - start
    assert update.payload is not None and moved.abs().sum() > 0
    assert torch.equal(update.payload.dense(start.numel()), moved)
