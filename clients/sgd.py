"""The one local SGD loop every gradient technique runs, over flat parameters.

Loading weights is one copy into the flat vector of a `BoundModule`. Weight decay, momentum and
the step act on each layer's gradient as the backward pass stored it (one foreach op each, as
torch.optim.SGD does), so no model-sized temporary is made to gather gradients; a technique's
gradient term (FedProx's proximal pull) acts on the flat gradient, gathered only for it.
Techniques change the loss (`loss`) or add to the gradient (`adjust`), never the loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fedcore.data.split import Split
from fedcore.params import BoundModule
from fedcore.records import Task, Update, delta_update
from fedcore.typed_config import require, require_positive

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: adjust(grad, params, start): add a technique's term to the flat gradient in place.
Adjust = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]


@dataclass(frozen=True)
class SGDParams:
    """Local SGD: steps are `Task.local_steps`, or `epochs` over the client's examples when > 0."""

    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 32
    epochs: float = 0.0

    def __post_init__(self) -> None:
        require_positive("lr", self.lr)
        require(0 <= self.momentum < 1, "momentum", "must be in [0, 1)", self.momentum)
        require(self.weight_decay >= 0, "weight_decay", "must be >= 0", self.weight_decay)
        require(self.batch_size >= 1, "batch_size", "must be >= 1", self.batch_size)
        require(self.epochs >= 0, "epochs", "must be >= 0", self.epochs)


def planned_steps(local_steps: int, params: SGDParams, num_examples: int) -> int:
    """Local steps a task asks for: `local_steps`, or epochs over the client's examples."""
    if params.epochs <= 0:
        return local_steps
    batch_size = max(1, min(params.batch_size, num_examples))
    return math.ceil(params.epochs * num_examples / batch_size)


def task_batches(task: Task, params: SGDParams, num_examples: int) -> list[torch.Tensor]:
    """The minibatches (example numbers) a training task walks, drawn from its seed."""
    batch_size = min(params.batch_size, num_examples)
    generator = torch.Generator().manual_seed(task.seed)
    steps = planned_steps(task.local_steps, params, num_examples)
    per_epoch = max(1, num_examples // batch_size)
    batches: list[torch.Tensor] = []
    while len(batches) < steps:
        order = torch.randperm(num_examples, generator=generator)
        batches.extend(order[i * batch_size : (i + 1) * batch_size] for i in range(per_epoch))
    return batches[:steps]


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The plain training loss."""
    return nn.functional.cross_entropy(logits, labels)


def begin(bound: BoundModule, model: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Load the task's model into `bound`; the starting parameters, on its device, kept apart
    from the ones training changes."""
    device = bound.params.device
    start = model[0].to(device)  # published models are never modified: no copy needed
    if start.data_ptr() == bound.params.data_ptr():
        start = start.clone()
    bound.load(start, model[1].to(device))
    return start


def momentum_buffers(
    bound: BoundModule, params: SGDParams, velocity: Callable[[], torch.Tensor]
) -> list[torch.Tensor] | None:
    """Per-layer views of a zeroed momentum buffer (None without momentum)."""
    if not params.momentum:
        return None
    return list(bound.layout.params.unflatten(velocity()).values())


def run_sgd(
    bound: BoundModule,
    velocity: Callable[[], torch.Tensor],
    task: Task,
    params: SGDParams,
    model: tuple[torch.Tensor, torch.Tensor],
    data: Split,
    *,
    reuse_model: bool,
    loss: Loss = cross_entropy,
    adjust: Adjust | None = None,
) -> Update:
    """Local SGD from `model` on `data`; the Update holds the delta and the mean train loss.
    `velocity()` gives a zeroed momentum buffer (asked for only when momentum is on)."""
    require_examples(task, data)
    started = time.perf_counter()
    device = bound.params.device
    start = begin(bound, model)
    batches = task_batches(task, params, len(data))
    moving = momentum_buffers(bound, params, velocity)
    bound.module.train()
    loss_sum = torch.zeros((), device=device)
    for indices in batches:
        x, y = data.batch(indices)
        bound.fresh_grads()
        value = loss(bound.module(x.to(device)), y.to(device))
        value.backward()
        loss_sum += value.detach()
        sgd_step(bound, params, moving, adjust, start)
    bound.fresh_grads()  # the last step's gradients are not kept past the task
    metrics = {"train_loss": float(loss_sum) / max(1, len(batches))}
    return trained_update(
        task, bound, start, len(data), len(batches), started, metrics, reuse_model
    )


def require_examples(task: Task, data: Split) -> None:
    """Training needs examples: a client without any is told so."""
    if len(data) == 0:
        raise ValueError(f"client {task.client_id} has no training examples")


def trained_update(
    task: Task,
    bound: BoundModule,
    start: torch.Tensor,
    examples: int,
    steps: int,
    started: float,
    metrics: dict[str, float],
    reuse_start: bool,
) -> Update:
    """The update of a training task that began at `started` (perf_counter) from `start`:
    the delta to `bound`'s weights, its buffers, and what it did."""
    return delta_update(
        task,
        start,
        bound.params,
        bound.read_buffers(),
        num_examples=examples,
        steps=steps,
        seconds=time.perf_counter() - started,
        metrics=metrics,
        reuse_start=reuse_start,
    )


def sgd_step(
    bound: BoundModule,
    params: SGDParams,
    moving: list[torch.Tensor] | None,
    adjust: Adjust | None,
    start: torch.Tensor,
) -> None:
    """One SGD step from the layer gradients the backward pass left (weight decay, the
    technique's term, momentum): torch.optim.SGD's update. The gradients are referenced only
    here, so the next backward pass never finds this step's still alive."""
    grads = bound.layer_grads()
    weights = bound.param_views
    if params.weight_decay:
        torch._foreach_add_(grads, weights, alpha=params.weight_decay)
    if adjust is not None:
        adjust(bound.grads, bound.params, start)
        grads = bound.layer_grads()
    if moving is not None:
        torch._foreach_mul_(moving, params.momentum)
        torch._foreach_add_(moving, grads)
        grads = moving
    with torch.no_grad():
        torch._foreach_add_(weights, grads, alpha=-params.lr)
