"""Test plug-ins for payloads on the wire: a technique that uploads seeds (`seed_probe`) and a
synchronous strategy (`payload_probe`) whose even clients train with the configured technique
and transforms and odd clients with `seed_probe`, and which publishes, per round, the sha256 of
every payload it received, so that a deployed run can be compared with its simulation."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from fedcore.clients.sgd import SGDParams
from fedcore.clients.techniques.base import Technique, register
from fedcore.data.split import Split
from fedcore.payloads import SEED_POOL, SeedDelta
from fedcore.records import Task, Update
from fedcore.serialization import tensor_bytes
from fedcore.strategies.base import Arrival
from fedcore.strategies.fedavg import FedAvg, FedAvgConfig
from fedcore.strategies.registry import register_strategy

if TYPE_CHECKING:
    from fedcore.clients.trainer import LocalTrainer


@dataclass(frozen=True)
class SeedProbeParams(SGDParams):
    """The seed pool's size K (and the SGD parameters every training task carries)."""

    seed_pool: int = 64


@register
class SeedProbe(Technique[SeedProbeParams]):
    """`local_steps` distinct seed indices from the pool and one scalar each, drawn from the
    task's seed (no training: a payload for the wire)."""

    name = "seed_probe"
    params_type = SeedProbeParams
    payload = "seeds"

    def run(
        self,
        trainer: LocalTrainer,
        task: Task,
        params: SeedProbeParams,
        model: tuple[torch.Tensor, torch.Tensor],
        data: Split,
        reuse_model: bool,
    ) -> Update:
        """Seeds and scalars from the task seed."""
        generator = torch.Generator().manual_seed(task.seed)
        count = min(task.local_steps, params.seed_pool)
        seeds = torch.sort(torch.randperm(params.seed_pool, generator=generator)[:count]).values
        scalars = torch.randn(count, generator=generator)
        return Update(
            client_id=task.client_id,
            base_version=task.version,
            num_examples=len(data),
            payload=SeedDelta(seeds, scalars),
            buffers=model[1].clone(),
            local_steps=count,
        )

    def passes(self, task: Task, params: SeedProbeParams, num_examples: int) -> float:
        """Two forward passes per seed, as a zeroth-order step would cost."""
        return float(2 * task.local_steps)


def payload_digest(arrival: Arrival) -> str:
    """sha256 of the payload's kind and tensors, as received."""
    payload = arrival.update.payload
    assert payload is not None
    digest = hashlib.sha256(payload.kind.encode())
    for name, tensor in payload.tensors().items():
        digest.update(name.encode())
        digest.update(tensor_bytes(tensor.contiguous()))
    return digest.hexdigest()


class PayloadProbe(FedAvg):
    """FedAvg over the dense and sparse payloads; seeds are recorded, not applied."""

    name = "payload_probe"
    payloads = ("dense", "sparse", "seeds")

    def __init__(self, config: FedAvgConfig, seed: int) -> None:
        super().__init__(config, seed)
        self.digests: dict[int, str] = {}

    def make_task(self, client_id: int, deadline: float | None) -> Task:
        """Odd clients upload seeds."""
        task = super().make_task(client_id, deadline)
        if client_id % 2 == 0:
            return task
        return dataclasses.replace(
            task, technique="seed_probe", hyper={SEED_POOL: 64.0}, transforms=()
        )

    def reset_round(self) -> None:
        """Forget the round's digests."""
        super().reset_round()
        self.digests = {}

    def absorb(self, arrival: Arrival) -> None:
        """Record every payload's digest; fold the ones that have a dense form."""
        self.digests[arrival.update.client_id] = payload_digest(arrival)
        if not isinstance(arrival.update.payload, SeedDelta):
            super().absorb(arrival)

    def aggregate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """FedAvg of the foldable payloads (the model unchanged if there were none)."""
        if self._deltas is None or self._deltas.count == 0:
            return self.ctx.model.params, self.ctx.model.buffers
        return super().aggregate()

    def round_info(self) -> dict[str, Any]:
        """The round's payload digests, in client order."""
        return {"digests": [self.digests[c] for c in sorted(self.digests)]}


register_strategy("payload_probe", FedAvgConfig, PayloadProbe)
