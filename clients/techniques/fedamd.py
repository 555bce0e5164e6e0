"""FedAMD's client half (Wu et al., ICML 2023): an anchor's large-batch gradient at the global
model, and a miner's recursive variance-reduced (SARAH-style) local steps.

Gradients are of the mean cross-entropy plus `weight_decay/2 * |w|^2` (the objective local SGD
follows); neither role uses momentum. With the client-kept gradient store (`client_store`), an
anchor keeps its gradients in `AnchorMemory`, which is this technique's client state.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fedcore.clients.sgd import SGDParams, planned_steps, require_examples, task_batches
from fedcore.clients.techniques.base import Technique, register
from fedcore.clients.techniques.sgd import SGD
from fedcore.data.split import Split
from fedcore.params import BoundModule
from fedcore.payloads import DenseDelta
from fedcore.records import Task, Update, delta_update
from fedcore.typed_config import require

if TYPE_CHECKING:
    from fedcore.clients.trainer import LocalTrainer

#: Task.extras key of a miner's starting direction v^t (flat float32, one entry per parameter).
DIRECTION = "direction"


@dataclass(frozen=True)
class AnchorParams:
    """An anchor's batch (`anchor_batch` examples, 0: all), its gradient's weight decay, and,
    with the client-kept store, the model version of the gradient the server has counted for
    this client (-1: none), which the upload is relative to."""

    batch_size: int = 32
    weight_decay: float = 0.0
    anchor_batch: int = 0
    client_store: bool = False
    anchor_base: int = -1

    def __post_init__(self) -> None:
        require(self.batch_size >= 1, "batch_size", "must be >= 1", self.batch_size)
        require(self.anchor_batch >= 0, "anchor_batch", "must be >= 0", self.anchor_batch)
        require(self.anchor_base >= -1, "anchor_base", "must be >= -1", self.anchor_base)


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

    def state_dict(self) -> dict[str, Any]:
        """The kept gradients, by client and version."""
        return {
            str(client): {str(v): g for v, g in kept.items()} for client, kept in self._kept.items()
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        self._kept = {
            int(client): {int(v): g for v, g in kept.items()} for client, kept in state.items()
        }


@register
class Anchor(Technique[AnchorParams]):
    """The mean gradient at the received model over `anchor_batch` examples drawn at random
    without replacement (all of them if 0), uploaded as a dense payload."""

    name = "anchor"
    params_type = AnchorParams

    def __init__(self) -> None:
        self.memory = AnchorMemory()

    def run(
        self,
        trainer: LocalTrainer,
        task: Task,
        params: AnchorParams,
        model: tuple[torch.Tensor, torch.Tensor],
        data: Split,
        reuse_model: bool,
    ) -> Update:
        """The anchor gradient (relative to the counted one with the client-kept store)."""
        require_examples(task, data)
        started = time.perf_counter()
        bound = trainer.bound
        bound.load(model[0].to(bound.params.device), model[1].to(bound.params.device))
        count = len(data) if params.anchor_batch <= 0 else min(params.anchor_batch, len(data))
        generator = torch.Generator().manual_seed(task.seed)
        chosen = torch.randperm(len(data), generator=generator)[:count]
        bound.module.train()
        bound.grads.zero_()
        loss_sum = torch.zeros((), dtype=torch.float64)
        for start in range(0, count, trainer.eval_batch_size):
            x, y = data.batch(chosen[start : start + trainer.eval_batch_size])
            logits = bound.module(x.to(bound.params.device))
            loss = nn.functional.cross_entropy(logits, y.to(logits.device), reduction="sum")
            (loss / count).backward()
            loss_sum += loss.detach().double().cpu()
        if params.weight_decay:
            bound.grads.add_(bound.params, alpha=params.weight_decay)
        gradient = bound.grads.clone().cpu()
        if params.client_store:
            gradient = self.memory.difference(
                task.client_id, params.anchor_base, task.version, gradient
            )
        batch_size = max(1, min(params.batch_size, len(data)))
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

    def passes(self, task: Task, params: AnchorParams, num_examples: int) -> float:
        """The large batch over the minibatch size."""
        wanted = params.anchor_batch
        examples = num_examples if wanted <= 0 else min(wanted, num_examples)
        return examples / max(1, min(params.batch_size, num_examples))

    def state_dict(self) -> dict[str, Any]:
        """The kept anchor gradients (client-kept store)."""
        return {"memory": self.memory.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the kept anchor gradients."""
        self.memory.load_state_dict(state["memory"])


@register
class Miner(SGD):
    """K recursive steps from x_0 with d_{-1} = v = extras["direction"], x_{-1} = x_0:
    d_k = d_{k-1} + grad(x_k; B_k) - grad(x_{k-1}; B_k), x_{k+1} = x_k - lr * d_k. Step 0 is
    exactly x_1 = x_0 - lr * v; every later step costs two passes over the same minibatch. With
    no direction (no anchor gradient stored yet) a miner runs plain local SGD."""

    name = "miner"
    params_type = SGDParams
    extras = (DIRECTION,)

    def run(
        self,
        trainer: LocalTrainer,
        task: Task,
        params: SGDParams,
        model: tuple[torch.Tensor, torch.Tensor],
        data: Split,
        reuse_model: bool,
    ) -> Update:
        """Recursive variance-reduced steps, or local SGD without a direction."""
        if DIRECTION not in task.extras:
            return super().run(trainer, task, params, model, data, reuse_model)
        require_examples(task, data)
        started = time.perf_counter()
        bound = trainer.bound
        device = bound.params.device
        bound.load(model[0].to(device), model[1].to(device))
        batches = task_batches(task, params, len(data))
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
                loss_sum += _gradient(bound, x, y, params.weight_decay).double().cpu()
                direction.add_(bound.grads)
                current.copy_(bound.params)
                bound.params.copy_(previous)
                _gradient(bound, x, y, params.weight_decay)
                direction.sub_(bound.grads)
                bound.params.copy_(current)
                examples += 2 * len(indices)
            previous.copy_(bound.params)
            bound.params.add_(direction, alpha=-params.lr)
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
            seconds=time.perf_counter() - started,
            metrics=metrics,
        )

    def passes(self, task: Task, params: SGDParams, num_examples: int) -> float:
        """Two passes per step after the first with a direction; one per step without."""
        steps = planned_steps(task.local_steps, params, num_examples)
        return float(2 * steps - 1) if DIRECTION in task.extras else float(steps)


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
