"""FedAMD (Wu et al., ICML 2023, "Anchor Sampling for FL with Partial Client Participation").

Each sampled client is an anchor or a miner. Anchors upload a large-batch gradient g_i at the
global model, which replaces their stored one; miners run K recursive variance-reduced steps
from v^t, the mean of the stored anchor gradients, and the server moves the model along the
mean of the miners' deltas through its server step (plain, lr 1, by default). A round with no miner republishes the model
unchanged. Differences from the reference code (HarliWu/FedAMD) are deliberate: anchors draw
their large batch at random, `anchor_probability` 1 makes every client an anchor, and no
all-client initial round is needed unless `init_round` asks for one.

Gradient store (`gradient_store`), with P parameters and N clients:

- `server`: the server keeps every client's last g_j (N * P * 4 bytes; 40 MB for 100 clients of
  a 100k-parameter model) and a float64 running sum S (8 P bytes), so v^t = S / count costs O(P).
- `client`: each client keeps its own last g_j (at most 2 * P * 4 bytes on the client, see
  `clients/techniques/fedamd.py`) and uploads g_new - g_old; the server keeps only S and
  the model version each contributor's counted gradient came from (8 P bytes + O(N) integers).
  A deployed client keeps its store across restarts only with `fedcore client --state FILE`; a
  simulation plays every client in one process (`simulation.workers: auto` takes no worker
  pool; a worker count is a ConfigError).

v^t is the mean over the clients with a stored gradient. Before any is stored (the first round,
or always with `anchor_probability` 0) miners get no direction and run plain local SGD, because
v = 0 would leave them at x^t (d stays 0). Miners and anchors ignore `training.momentum`: the
reference recursion is plain SGD.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch

from fedcore.records import Task
from fedcore.strategies.base import Arrival
from fedcore.strategies.fedavg import FedAvg, FedAvgConfig
from fedcore.strategies.rounds import ClientOrder
from fedcore.typed_config import require

InitPhase = Literal["pending", "running", "done"]


@dataclass
class FedAMDConfig(FedAvgConfig):
    """FedAMD options: anchor rule, anchor batch, server step, gradient store, initial round."""

    #: Mean over miners, uniform (reference) or by examples.
    weighting: Literal["examples", "uniform"] = "uniform"
    #: Off: anchors upload gradients, whose norms are not comparable with the miners' deltas.
    norm_bound: float = 0.0
    #: Chance each sampled client is an anchor.
    anchor_probability: float = 0.2
    #: T > 0: every T-th round all sampled clients are anchors.
    anchor_period: int = 0
    #: Examples in an anchor's random batch (0: its whole local set).
    anchor_batch: int = 0
    #: Where anchor gradients are kept: server (N*P*4 bytes) or client.
    gradient_store: Literal["server", "client"] = "server"
    #: Every client first uploads an anchor gradient at x^0.
    init_round: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            0 <= self.anchor_probability <= 1,
            "anchor_probability",
            "must be in [0, 1]",
            self.anchor_probability,
        )
        require(
            self.anchor_period >= 0,
            "anchor_period",
            "must be >= 0 (0: use anchor_probability)",
            self.anchor_period,
        )
        require(
            self.anchor_batch >= 0,
            "anchor_batch",
            "must be >= 0 (0: whole local set)",
            self.anchor_batch,
        )


class FedAMD(FedAvg):
    """Synchronous rounds of anchors and miners over a memory-aware anchor-gradient store.

    Anchor rule: with `anchor_period` T > 0, every sampled client of rounds 1, T + 1, 2T + 1, ...
    is an anchor and all others are miners; otherwise each sampled client is an anchor with
    probability `anchor_probability`. With `init_round`, every idle client (in simulation, all
    of them) first uploads an anchor gradient at the initial model; that phase publishes nothing
    and has no deadline (it waits for each client it asked, or for its task to be lost).
    """

    name = "fedamd"
    own_techniques = ("miner", "anchor")
    config: FedAMDConfig

    def __init__(self, config: FedAMDConfig, seed: int) -> None:
        super().__init__(config, seed)
        self.grad_sum: torch.Tensor | None = None
        self.stored: dict[int, torch.Tensor] = {}
        self.counted: dict[int, int] = {}
        self.anchors: set[int] = set()
        self.init_phase: InitPhase = "pending" if config.init_round else "done"
        self.init_waiting: set[int] = set()
        self._init_order = ClientOrder(lambda arrival: self.ctx.keep(arrival))
        self._direction: tuple[int, torch.Tensor | None] = (-1, None)

    @property
    def keeps_client_state(self) -> bool:
        """The client-kept gradient store lives in the client between anchor tasks."""
        return self.config.gradient_store == "client"

    # -- events: the optional initial all-client anchor phase, then synchronous rounds ---------
    def on_start(self) -> None:
        """Run (or, after a resume, restart) the initial phase if asked for; else open rounds."""
        if self.init_phase == "done":
            super().on_start()
        else:
            self.init_phase = "pending"
            self._try_init()

    def on_client_idle(self, client_id: int) -> None:
        """Clients gather for the initial phase before any round opens."""
        if self.init_phase == "done":
            super().on_client_idle(client_id)
        elif self.init_phase == "pending":
            self._try_init()

    def on_update(self, arrival: Arrival) -> None:
        """Initial-phase anchors are stored; round arrivals go through SynchronousRounds."""
        client = arrival.update.client_id
        if self.init_phase != "running":
            super().on_update(arrival)
        elif client in self.init_waiting:
            self._store_all(self._init_order.arrive(arrival))
            self._init_returned(client)

    def on_task_lost(self, task: Task) -> None:
        """A client lost during the initial phase is not waited for."""
        if self.init_phase == "running":
            self._store_all(self._init_order.drop(task.client_id))
            self._init_returned(task.client_id)
        else:
            super().on_task_lost(task)

    def _try_init(self) -> None:
        idle = self.ctx.idle_clients()
        if len(idle) < self.config.clients_per_round:
            return
        self.init_phase = "running"
        self.init_waiting = set(idle)
        self._init_order.expect(idle)
        for client in idle:
            self.ctx.dispatch(self._anchor_task(client, None))

    def _init_returned(self, client: int) -> None:
        self.init_waiting.discard(client)
        if not self.init_waiting:
            self.init_phase = "done"
            super().on_start()

    # -- rounds -----------------------------------------------------------------------------
    def reset_round(self) -> None:
        """Empty the miners' accumulators and forget this round's roles."""
        super().reset_round()
        self.anchors = set()

    def make_task(self, client_id: int, deadline: float | None) -> Task:
        """An anchor task, or a miner task carrying v^t (none while no gradient is stored)."""
        if self._is_anchor():
            self.anchors.add(client_id)
            return self._anchor_task(client_id, deadline)
        task = self.config.training.task(client_id, self.ctx.model.version, self.rng, deadline)
        direction = self.direction()
        return replace(
            task,
            technique="miner",
            hyper={**task.hyper, "momentum": 0.0},
            extras={} if direction is None else {"direction": direction},
        )

    def absorb(self, arrival: Arrival) -> None:
        """An anchor's gradient goes into the store; a miner's delta into the round's mean."""
        client = arrival.update.client_id
        if client in self.anchors:
            self._store(client, arrival.delta, arrival.base.version)
        else:
            super().absorb(arrival)

    def aggregate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The server step along the mean miner delta; with no miner, the model unchanged."""
        if self._deltas is None or self._deltas.count == 0:
            model = self.ctx.model
            return model.params, model.buffers
        return super().aggregate()

    def round_info(self) -> dict[str, Any]:
        """How the closing round split into anchors and miners."""
        miners = 0 if self._deltas is None else self._deltas.count
        return {"anchors": len(self.anchors), "miners": miners}

    def direction(self) -> torch.Tensor | None:
        """v^t: the mean stored anchor gradient as this round opened (None if none is stored).

        Computed once per round, before any of the round's anchors report, so a new g_i takes
        effect from the next round on."""
        if self._direction[0] != self.round:
            count = len(self.counted)
            mean = None if self.grad_sum is None or not count else (self.grad_sum / count).float()
            self._direction = (self.round, mean)
        return self._direction[1]

    def _is_anchor(self) -> bool:
        """The anchor rule for the next cohort member (draws from the sampler only for 0 < p < 1,
        so with p = 0 the task seeds are those FedAvg would draw)."""
        if self.config.anchor_period:
            return (self.round - 1) % self.config.anchor_period == 0
        p = self.config.anchor_probability
        if p <= 0 or p >= 1:
            return p >= 1
        return bool(self.rng.random() < p)

    def _anchor_task(self, client_id: int, deadline: float | None) -> Task:
        """Large-batch gradient at the current model. Its `local_steps`/`epochs` express the work
        in minibatches, so the simulated clock charges an anchor for its whole batch."""
        task = self.config.training.task(client_id, self.ctx.model.version, self.rng, deadline)
        training, batch = self.config.training, self.config.anchor_batch
        hyper = {
            "batch_size": float(training.batch_size),
            "weight_decay": training.weight_decay,
            "anchor_batch": float(batch),
        }
        if self.config.gradient_store == "client":
            hyper["client_store"] = 1.0
            hyper["anchor_base"] = float(self.counted.get(client_id, -1))
        steps = math.ceil(batch / training.batch_size) if batch else 1
        return replace(task, technique="anchor", local_steps=steps, hyper=hyper)

    def _store_all(self, arrivals: list[Arrival]) -> None:
        """Store initial-phase anchors in client order (the float sum is then the same bits in
        any arrival order)."""
        for arrival in arrivals:
            self._store(arrival.update.client_id, arrival.delta, arrival.base.version)

    def _store(self, client: int, gradient: torch.Tensor, version: int) -> None:
        """Fold an anchor upload into S: a gradient replacing the stored one (server store), or
        the client's g_new - g_old (client store)."""
        if self.grad_sum is None:
            self.grad_sum = torch.zeros(gradient.numel(), dtype=torch.float64)
        self.grad_sum.add_(gradient)
        if self.config.gradient_store == "server":
            old = self.stored.get(client)
            if old is not None:
                self.grad_sum.sub_(old)
            self.stored[client] = gradient.clone()
        self.counted[client] = version

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Round state, the running sum, the stored gradients and the initial phase."""
        return {
            **super().state_dict(),
            "grad_sum": self.grad_sum,
            "stored": {str(client): g for client, g in self.stored.items()},
            "counted": {str(client): v for client, v in self.counted.items()},
            "init_phase": self.init_phase,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict returned; an interrupted initial phase restarts on_start."""
        super().load_state_dict(state)
        self.grad_sum = state["grad_sum"]
        self.stored = {int(client): g for client, g in state["stored"].items()}
        self.counted = {int(client): int(v) for client, v in state["counted"].items()}
        self.init_phase = state["init_phase"]
        self._direction = (-1, None)
