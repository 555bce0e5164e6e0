"""Local work on a client: SGD steps from a received model, and evaluation.

One implementation serves simulated and deployed clients. The model is bound to flat vectors,
so loading weights, the proximal term, weight decay and the SGD step are each one tensor op.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import nn

from fedcore.data.split import Split
from fedcore.params import BoundModule
from fedcore.records import Task, Update, WorkKind, delta_update
from fedcore.variance_reduced import (
    ANCHOR_BATCH,
    DIRECTION,
    AnchorMemory,
    anchor_update,
    miner_update,
)


class LocalTrainer:
    """Runs Tasks on local data with one reusable, flat-bound model instance."""

    def __init__(
        self,
        build: Callable[[], nn.Module],
        device: torch.device | str = "cpu",
        eval_batch_size: int = 1024,
    ) -> None:
        self.device = torch.device(device)
        self.bound = BoundModule(build().to(self.device))
        self.eval_batch_size = eval_batch_size
        self._momentum: torch.Tensor | None = None
        self.anchor_memory = AnchorMemory()

    def train(
        self,
        task: Task,
        params: torch.Tensor,
        buffers: torch.Tensor,
        data: Split,
        reuse_params: bool = False,
    ) -> Update:
        """Run `task` from (params, buffers) on `data`; return the delta and metrics.

        SGD tasks, and FedAMD miners given no direction, run local SGD; FedAMD anchors and miners
        with a direction run in `fedcore.variance_reduced`. `reuse_params` says `params` is the
        caller's own copy, free to overwrite: local SGD then forms the delta in its storage
        (a deployed client's download buffer) instead of allocating one per task."""
        if len(data) == 0:
            raise ValueError(f"client {task.client_id} has no training examples")
        if task.kind is WorkKind.ANCHOR:
            return anchor_update(
                self.bound, task, params, buffers, data, self.anchor_memory, self.eval_batch_size
            )
        if task.kind is WorkKind.MINER and DIRECTION in task.extras:
            batches = task_batches(task, len(data))
            return miner_update(self.bound, task, params, buffers, data, batches)
        if task.kind not in (WorkKind.SGD, WorkKind.MINER):
            raise ValueError(f"LocalTrainer.train cannot run {task.kind} tasks")
        started = time.perf_counter()
        bound, hyper = self.bound, task.hyper
        start = params.to(self.device)  # published models are never modified: no copy needed
        if start.data_ptr() == bound.params.data_ptr():
            start = start.clone()
        bound.load(start, buffers.to(self.device))
        steps = planned_steps(task, len(data))
        lr, momentum = float(hyper.get("lr", 0.05)), float(hyper.get("momentum", 0.0))
        weight_decay, prox_mu = (
            float(hyper.get("weight_decay", 0.0)),
            float(hyper.get("prox_mu", 0.0)),
        )
        velocity = self._zeroed_momentum() if momentum else None
        bound.module.train()
        loss_sum = torch.zeros((), device=self.device)
        for indices in task_batches(task, len(data)):
            x, y = data.batch(indices)
            bound.grads.zero_()
            loss = training_loss(bound.module(x.to(self.device)), y.to(self.device), hyper)
            loss.backward()
            loss_sum += loss.detach()
            grad = bound.grads
            if weight_decay:
                grad.add_(bound.params, alpha=weight_decay)
            if prox_mu:
                grad.add_(bound.params - start, alpha=prox_mu)
            if velocity is not None:
                grad = velocity.mul_(momentum).add_(grad)
            with torch.no_grad():
                bound.params.add_(grad, alpha=-lr)
        elapsed = time.perf_counter() - started
        return delta_update(
            task,
            start,
            bound.params,
            bound.read_buffers(),
            num_examples=len(data),
            steps=steps,
            seconds=elapsed,
            metrics={"train_loss": float(loss_sum) / max(1, steps)},
            reuse_start=reuse_params,
        )

    def _zeroed_momentum(self) -> torch.Tensor:
        """The momentum buffer, zeroed; allocated on first use (evaluators never need it)."""
        if self._momentum is None:
            self._momentum = torch.zeros_like(self.bound.params)
        return self._momentum.zero_()


def training_loss(
    logits: torch.Tensor, labels: torch.Tensor, hyper: dict[str, float]
) -> torch.Tensor:
    """Cross-entropy, plus FedLD's margin-control term when the task sets `margin_lambda`.

    The term is `margin_lambda * log(1 + ||softmax(z)||^2)`, penalising confident outputs. By
    default the norm is the Frobenius norm of the whole [B, C] probability matrix, as the FedLD
    reference codes it (so it grows with the batch size); `margin_per_sample` = 1 takes the mean
    over the batch of the per-example term instead.
    """
    loss = nn.functional.cross_entropy(logits, labels)
    margin = float(hyper.get("margin_lambda", 0.0))
    if not margin:
        return loss
    squared = torch.softmax(logits, dim=1).square().sum(dim=1)
    if hyper.get("margin_per_sample", 0.0):
        return loss + margin * torch.log1p(squared).mean()
    return loss + margin * torch.log1p(squared.sum())


def planned_steps(task: Task, num_examples: int) -> int:
    """Local steps a task asks for: `local_steps`, or epochs over the client's examples."""
    epochs = float(task.hyper.get("epochs", 0.0))
    if epochs <= 0:
        return task.local_steps
    batch_size = max(1, min(int(task.hyper.get("batch_size", 32)), num_examples))
    return math.ceil(epochs * num_examples / batch_size)


def planned_passes(task: Task, num_examples: int) -> float:
    """What a task costs in minibatch forward/backward passes (the simulated clock charges
    this): a step each for SGD; two per step after the first for a FedAMD miner with a
    direction; an anchor's large batch over the batch size."""
    steps = planned_steps(task, num_examples)
    if task.kind is WorkKind.MINER and DIRECTION in task.extras:
        return float(2 * steps - 1)
    if task.kind is WorkKind.ANCHOR:
        wanted = int(task.hyper.get(ANCHOR_BATCH, 0))
        examples = num_examples if wanted <= 0 else min(wanted, num_examples)
        return examples / max(1, min(int(task.hyper.get("batch_size", 32)), num_examples))
    return float(steps)


def task_batches(task: Task, num_examples: int) -> list[torch.Tensor]:
    """The minibatches (example numbers) a training task walks, drawn from its seed."""
    batch_size = min(int(task.hyper.get("batch_size", 32)), num_examples)
    generator = torch.Generator().manual_seed(task.seed)
    return _batches(num_examples, batch_size, planned_steps(task, num_examples), generator)


def _batches(n: int, batch_size: int, steps: int, generator: torch.Generator) -> list[torch.Tensor]:
    """`steps` minibatches of example numbers, walking fresh random permutations of 0..n-1."""
    per_epoch = max(1, n // batch_size)
    batches: list[torch.Tensor] = []
    while len(batches) < steps:
        order = torch.randperm(n, generator=generator)
        batches.extend(order[i * batch_size : (i + 1) * batch_size] for i in range(per_epoch))
    return batches[:steps]
