"""FedAMD's client work (Wu et al., ICML 2023): an anchor's large-batch gradient at the global
model, and a miner's recursive variance-reduced (SARAH-style) local steps.

`LocalTrainer.train` dispatches ANCHOR and MINER tasks here, so simulated and deployed clients
run one implementation. Gradients are of the mean cross-entropy plus `weight_decay/2 * |w|^2`
(the same objective local SGD follows); neither role uses momentum.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from fedcore.data.split import Split
from fedcore.params import BoundModule
from fedcore.records import DenseDelta, Task, Update, delta_update

#: Task.extras key of a miner's starting direction v^t (flat float32, one entry per parameter).
DIRECTION = "direction"
#: Task.hyper key: examples in an anchor's random batch (0: the whole local set).
ANCHOR_BATCH = "anchor_batch"
#: Task.hyper key, present only with the client-kept gradient store: the model version of the
#: anchor gradient the server has counted for this client (-1: none), which the upload is
#: relative to.
ANCHOR_BASE = "anchor_base"


class AnchorMemory:
    """Anchor gradients kept on the client for the client-kept store: per client, the one the
    server counted (named by its model version) and the newest, whose upload may not have been
    counted yet. So a client holds at most 2 x P floats, and a lost upload does not desynchronise
    the server's running sum: the next anchor task names the version it is relative to."""

    def __init__(self) -> None:
        self._kept: dict[int, dict[int, torch.Tensor]] = {}

    def difference(
        self, client: int, base: int, version: int, gradient: torch.Tensor
    ) -> torch.Tensor:
        """Keep `gradient` (computed at model `version`); return it minus the one of `base`."""
        kept = self._kept.get(client, {})
        if base >= 0 and base not in kept:
            raise RuntimeError(
                f"client {client} no longer holds its anchor gradient of version {base} that the "
                "server counted (client restarted, or simulated with worker processes); use "
                "strategy.gradient_store=server"
            )
        self._kept[client] = {version: gradient, **({base: kept[base]} if base >= 0 else {})}
        return gradient - kept[base] if base >= 0 else gradient.clone()

    def held(self, client: int) -> list[int]:
        """Model versions of the gradients `client` holds, ascending."""
        return sorted(self._kept.get(client, {}))


def anchor_update(
    bound: BoundModule,
    task: Task,
    params: torch.Tensor,
    buffers: torch.Tensor,
    data: Split,
    memory: AnchorMemory,
    chunk_size: int,
) -> Update:
    """The mean gradient at (params, buffers) over `anchor_batch` examples drawn at random without
    replacement (all of them if 0), as a DenseDelta payload; relative to the previous anchor
    gradient when the task carries `anchor_base` (client-kept store)."""
    started = time.perf_counter()
    bound.load(params.to(bound.params.device), buffers.to(bound.params.device))
    wanted = int(task.hyper.get(ANCHOR_BATCH, 0))
    count = len(data) if wanted <= 0 else min(wanted, len(data))
    generator = torch.Generator().manual_seed(task.seed)
    chosen = torch.randperm(len(data), generator=generator)[:count]
    bound.module.train()
    bound.grads.zero_()
    loss_sum = torch.zeros((), dtype=torch.float64)
    for start in range(0, count, chunk_size):
        x, y = data.batch(chosen[start : start + chunk_size])
        logits = bound.module(x.to(bound.params.device))
        loss = nn.functional.cross_entropy(logits, y.to(logits.device), reduction="sum")
        (loss / count).backward()
        loss_sum += loss.detach().double().cpu()
    weight_decay = float(task.hyper.get("weight_decay", 0.0))
    if weight_decay:
        bound.grads.add_(bound.params, alpha=weight_decay)
    gradient = bound.grads.clone().cpu()
    if ANCHOR_BASE in task.hyper:
        gradient = memory.difference(
            task.client_id, int(task.hyper[ANCHOR_BASE]), task.version, gradient
        )
    batch_size = max(1, min(int(task.hyper.get("batch_size", 32)), len(data)))
    elapsed = time.perf_counter() - started
    return Update(
        client_id=task.client_id,
        base_version=task.version,
        num_examples=count,
        payload=DenseDelta(gradient),
        local_steps=math.ceil(count / batch_size),
        compute_seconds=elapsed,
        wall_seconds=elapsed,
        metrics={"train_loss": float(loss_sum) / count, "grad_examples": float(count)},
    )


def miner_update(
    bound: BoundModule,
    task: Task,
    params: torch.Tensor,
    buffers: torch.Tensor,
    data: Split,
    batches: list[torch.Tensor],
) -> Update:
    """K recursive steps from x_0 = params with d_{-1} = v = extras["direction"], x_{-1} = x_0:
    d_k = d_{k-1} + grad(x_k; B_k) - grad(x_{k-1}; B_k), x_{k+1} = x_k - lr * d_k.

    Step 0 is exactly x_1 = x_0 - lr * v (the two gradients coincide, so they are not computed);
    every later step costs two forward/backward passes over the same minibatch."""
    started = time.perf_counter()
    device = bound.params.device
    bound.load(params.to(device), buffers.to(device))
    lr = float(task.hyper.get("lr", 0.05))
    weight_decay = float(task.hyper.get("weight_decay", 0.0))
    start = bound.params.clone()
    direction = task.extras[DIRECTION].to(device=device, dtype=start.dtype).clone()
    previous = start.clone()
    current = torch.empty_like(start)
    bound.module.train()
    loss_sum = torch.zeros((), dtype=torch.float64)
    examples = 0
    for step, indices in enumerate(batches):
        if step:
            x, y = data.batch(indices)
            x, y = x.to(device), y.to(device)
            loss_sum += _gradient(bound, x, y, weight_decay).double().cpu()
            direction.add_(bound.grads)
            current.copy_(bound.params)
            bound.params.copy_(previous)
            _gradient(bound, x, y, weight_decay)
            direction.sub_(bound.grads)
            bound.params.copy_(current)
            examples += 2 * len(indices)
        previous.copy_(bound.params)
        bound.params.add_(direction, alpha=-lr)
    elapsed = time.perf_counter() - started
    metrics = {"grad_examples": float(examples)}
    if len(batches) > 1:
        metrics["train_loss"] = float(loss_sum) / (len(batches) - 1)
    return delta_update(
        task,
        start,
        bound.params,
        bound.read_buffers(),
        num_examples=len(data),
        steps=len(batches),
        seconds=elapsed,
        metrics=metrics,
    )


def _gradient(
    bound: BoundModule, x: torch.Tensor, y: torch.Tensor, weight_decay: float
) -> torch.Tensor:
    """Leave the gradient of the minibatch objective at the bound parameters in `bound.grads`;
    return the (detached) cross-entropy."""
    bound.grads.zero_()
    loss = nn.functional.cross_entropy(bound.module(x), y)
    loss.backward()
    if weight_decay:
        bound.grads.add_(bound.params, alpha=weight_decay)
    return loss.detach()
