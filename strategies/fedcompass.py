"""FedCompass (Li et al., ICLR 2024): semi-asynchronous, compute-aware scheduling.

The server keeps a moving-average estimate of each client's seconds per local step and gives
each client the number of local steps in [Q_min, Q_max] that brings it back together with an
arrival group (`compass_groups.py`). A group aggregates when its last member arrives, or at its
deadline (latest_time_factor x its expected duration). Early and on-time members simply get no
new task until their group aggregates; then the group's members, the one whose arrival closed it
included, are reassigned fastest first. Updates arriving after their group closed are buffered
and applied, staleness-weighted, in the next group aggregation that has arrivals of its own (a
group that closes with none leaves the late buffer waiting). A client whose speed is unknown
(no profile) trains Q_initial steps alone and its first update is applied at once.

Aggregation (gradient style, as the reference's FedCompassAggregator): Delta = sum_j alpha * s(tau_j) * p_j * delta_j over the
group's arrivals and the late buffer, applied by the server step (`server_step.py`; plain:
w <- w + Delta). A late update counts like an on-time one, with its staleness: the full
alpha * s(tau_j) * p_j. p_j is n_j / sum n over that set (`examples`), 1 / |set| (`uniform`), or
1 / N for the N clients of the federation (`federation`: the reference's `equal`, under which a
lone arrival moves the model by alpha / N times its delta); tau_j is the versions published
since delta_j's base; optionally FedNova-style step normalisation delta_j * Q_eff / Q_j.
Non-trainable buffers become the p-weighted mean over the set.

Speed samples are (arrival time - dispatch time) / Q_i measured with `ctx.now`, so they include
download, upload and queueing, like the reference (which measures wall time); on the virtual
clock `Update.compute_seconds` would be the host's time, not the simulated device's. The first
estimate is the client's profiled seconds per step (`ctx.client_speed`) when the runtime has one.

The reference's bugs are avoided by construction: s(tau) is non-increasing (staleness.py),
timers and arrivals are events on one loop (no aggregation outside a lock, no thread parked per
waiting client), group buffers are dropped when their group closes, and each update is applied
exactly once (the runtime counts model versions, not updates).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from fedcore.config import TrainingConfig
from fedcore.kernels import StreamingAccumulator
from fedcore.records import Task
from fedcore.strategies.base import Arrival, Strategy
from fedcore.strategies.compass_groups import ArrivalGroup, GroupPlanner, StepBounds
from fedcore.strategies.server_step import ServerStep, ServerStepConfig
from fedcore.strategies.staleness import StalenessConfig, staleness_weight
from fedcore.typed_config import require

TIMER_PREFIX = "compass-group-"
ClientState = Literal["free", "solo", "grouped", "late", "waiting"]


@dataclass
class FedCompassConfig:
    """Step bounds, deadline factor, speed averaging and the staleness-weighted aggregation.

    `training.local_steps` is not used: FedCompass chooses each task's steps."""

    #: Fewest local steps a task gets.
    min_local_steps: int = 20
    #: Most local steps a task gets.
    max_local_steps: int = 100
    #: Steps of a client's first task (0: from its profile).
    initial_local_steps: int = 0
    #: A group closes at this multiple of its expected duration.
    latest_time_factor: float = 1.5
    #: Weight of the newest speed sample in each client's moving average.
    speed_momentum: float = 0.9
    #: Server mixing weight of a group's aggregate.
    alpha: float = 0.9
    #: examples, uniform, or federation (1/N over all clients).
    weighting: Literal["examples", "uniform", "federation"] = "examples"
    #: Scale each delta by Q_eff / Q_j.
    normalize_steps: bool = False
    #: Staleness weighting of late updates.
    staleness: StalenessConfig = field(default_factory=StalenessConfig)
    #: Updates staler than this are dropped (null: none are).
    max_staleness: int | None = None
    training: TrainingConfig = field(default_factory=TrainingConfig)
    server_step: ServerStepConfig = field(default_factory=ServerStepConfig)

    def __post_init__(self) -> None:
        require(self.min_local_steps >= 1, "min_local_steps", "must be >= 1", self.min_local_steps)
        require(
            self.max_local_steps >= self.min_local_steps,
            "max_local_steps",
            f"must be >= min_local_steps ({self.min_local_steps})",
            self.max_local_steps,
        )
        require(
            self.initial_local_steps >= 0,
            "initial_local_steps",
            "must be >= 0 (0: max_local_steps)",
            self.initial_local_steps,
        )
        require(
            self.latest_time_factor >= 1,
            "latest_time_factor",
            "must be >= 1",
            self.latest_time_factor,
        )
        require(
            0 < self.speed_momentum <= 1, "speed_momentum", "must be in (0, 1]", self.speed_momentum
        )
        require(self.alpha > 0, "alpha", "must be > 0", self.alpha)
        require(
            self.max_staleness is None or self.max_staleness >= 0,
            "max_staleness",
            "must be >= 0 or null",
            self.max_staleness,
        )
        require(
            self.training.local_epochs == 0,
            "training.local_epochs",
            "must be 0 under FedCompass, which assigns local steps",
            self.training.local_epochs,
        )


@dataclass
class CompassClient:
    """What FedCompass tracks per client: its speed estimate (seconds per step), its current
    task's steps and dispatch time, and where it stands (free, training solo / in a group /
    after its group closed, or waiting for its group)."""

    speed: float | None = None
    steps: int = 0
    started: float = 0.0
    state: ClientState = "free"
    group: int = -1


@dataclass
class Buffered:
    """An update held until its group (or the next group) aggregates."""

    client: int
    delta: torch.Tensor
    buffers: torch.Tensor | None
    examples: int
    steps: int
    base_version: int

    def to_state(self) -> dict[str, Any]:
        """Checkpoint form: tensors and JSON-able scalars."""
        return {
            "client": self.client,
            "delta": self.delta,
            "buffers": self.buffers,
            "examples": self.examples,
            "steps": self.steps,
            "base_version": self.base_version,
        }

    @classmethod
    def from_state(cls, data: dict[str, Any]) -> Buffered:
        """Inverse of `to_state`."""
        return cls(
            int(data["client"]),
            data["delta"],
            data["buffers"],
            int(data["examples"]),
            int(data["steps"]),
            int(data["base_version"]),
        )


class FedCompass(Strategy):
    """Compute-aware semi-asynchronous FL: arrival groups with per-client local steps."""

    name = "fedcompass"

    def __init__(self, config: FedCompassConfig, seed: int) -> None:
        super().__init__(seed)
        self.config = config
        self.max_staleness = config.max_staleness
        self.planner = GroupPlanner(
            StepBounds(config.min_local_steps, config.max_local_steps, config.latest_time_factor)
        )
        self.clients: dict[int, CompassClient] = {}
        self.waiting: dict[int, list[Buffered]] = {}
        self.late: list[Buffered] = []
        self._deltas: StreamingAccumulator | None = None
        self._buffers: StreamingAccumulator | None = None
        self.step = ServerStep(config.server_step)

    # -- events --------------------------------------------------------------------------------
    def on_start(self) -> None:
        """Assign every idle client; after a resume, tasks that were training are lost first."""
        for client in sorted(self.clients):
            if self.clients[client].state in ("solo", "grouped", "late"):
                self._lose(client)
        self._assign_idle()

    def on_client_idle(self, client_id: int) -> None:
        """A free client gets a task at once; one waiting for its group gets nothing yet."""
        if self._client(client_id).state == "free":
            self._assign(client_id)

    def on_update(self, arrival: Arrival) -> None:
        """Update the speed estimate; then apply a solo update, hold an on-time one for its
        group (aggregating if it completes the group), or buffer a late one."""
        update = arrival.update
        record = self._client(update.client_id)
        self._observe_speed(record)
        entry = Buffered(
            update.client_id,
            arrival.delta,
            update.buffers,
            update.num_examples,
            record.steps,
            arrival.base.version,
        )
        if record.state == "grouped":
            group = self.planner.groups[record.group]
            if self.ctx.now > group.deadline:
                self._close(group)
        if record.state == "solo":
            record.state = "free"
            self._apply([entry], group=-1, members=[entry.client])
        elif record.state == "late":
            record.state = "free"
            self.late.append(entry)
        else:
            group = self.planner.groups[record.group]
            group.expected.discard(update.client_id)
            group.arrived.add(update.client_id)
            record.state = "waiting"
            self.waiting[group.gid].append(entry)
            if not group.expected:
                self._close(group)

    def on_timer(self, key: str) -> None:
        """A group's deadline: it aggregates whoever has arrived (and the late buffer)."""
        if key.startswith(TIMER_PREFIX):
            group = self.planner.groups.get(int(key.removeprefix(TIMER_PREFIX)))
            if group is not None:
                self._close(group)

    def on_task_lost(self, task: Task) -> None:
        """A lost member no longer holds its group back."""
        self._lose(task.client_id)

    # -- scheduling ----------------------------------------------------------------------------
    def _client(self, client_id: int) -> CompassClient:
        return self.clients.setdefault(client_id, CompassClient())

    def _observe_speed(self, record: CompassClient) -> None:
        """Moving average with weight `speed_momentum` on the newest sample."""
        sample = (self.ctx.now - record.started) / record.steps
        if record.speed is None:
            record.speed = sample
        else:
            momentum = self.config.speed_momentum
            record.speed = (1 - momentum) * record.speed + momentum * sample

    def _assign_idle(self) -> None:
        """Assign every idle free client, fastest first (they found the groups others join)."""
        free = [c for c in self.ctx.idle_clients() if self._client(c).state == "free"]
        speeds = {c: self._speed(c) for c in free}
        known = sorted((s, c) for c, s in speeds.items() if s is not None)
        for _, client in known:
            self._assign(client)
        for client in free:
            if speeds[client] is None:
                self._assign(client)

    def _speed(self, client_id: int) -> float | None:
        """The client's estimate, seeded from its profile the first time it is needed."""
        record = self._client(client_id)
        if record.speed is None:
            record.speed = self.ctx.client_speed(client_id)
        return record.speed

    def _assign(self, client_id: int) -> None:
        """Give a free client its next task: in a group when its speed is known, else solo."""
        record = self._client(client_id)
        speed = self._speed(client_id)
        now = self.ctx.now
        deadline: float | None = None
        if speed is None:
            steps = self.config.initial_local_steps or self.config.max_local_steps
            record.state, record.group = "solo", -1
        else:
            speeds = {c: r.speed for c, r in self.clients.items() if r.speed is not None}
            group, steps, created = self.planner.plan(client_id, speed, now, speeds)
            if created:
                self.waiting[group.gid] = []
                self.ctx.set_timer(group.deadline, f"{TIMER_PREFIX}{group.gid}")
            record.state, record.group, deadline = "grouped", group.gid, group.deadline
        record.steps, record.started = steps, now
        task = self.config.training.task(client_id, self.ctx.model.version, self.rng, deadline)
        self.ctx.dispatch(replace(task, local_steps=steps))

    def _lose(self, client_id: int) -> None:
        """The client's task will not return: it leaves its group, which may now be complete."""
        record = self._client(client_id)
        group = self.planner.groups.get(record.group) if record.state == "grouped" else None
        record.state, record.group = "free", -1
        if group is not None:
            group.expected.discard(client_id)
            if not group.expected:
                self._close(group)

    def _close(self, group: ArrivalGroup) -> None:
        """Aggregate the group's arrivals with the late buffer (which waits for a group with
        arrivals); members still training become late; the idle free clients, the arrived
        members among them, are assigned again fastest first."""
        del self.planner.groups[group.gid]
        entries = self.waiting.pop(group.gid)
        for client in group.expected:
            self.clients[client].state, self.clients[client].group = "late", -1
        for client in group.arrived:
            self.clients[client].state, self.clients[client].group = "free", -1
        if entries:
            late, self.late = self.late, []
            self._apply(
                late + entries,
                group=group.gid,
                members=[e.client for e in entries],
                late=[e.client for e in late],
                stragglers=sorted(group.expected),
            )
        self._assign_idle()

    # -- aggregation ---------------------------------------------------------------------------
    def shares(self, entries: list[Buffered]) -> list[float]:
        """p_j per entry, as `weighting` says."""
        weighting = self.config.weighting
        if weighting == "federation":
            return [1.0 / self.ctx.num_clients] * len(entries)
        raw = [float(e.examples) if weighting == "examples" else 1.0 for e in entries]
        total = sum(raw)
        return [w / total for w in raw]

    def coefficients(self, entries: list[Buffered]) -> list[float]:
        """alpha * s(tau_j) * p_j (times Q_eff / Q_j with step normalisation) per entry."""
        config = self.config
        shares = self.shares(entries)
        version = self.ctx.model.version
        coefs = [
            config.alpha * staleness_weight(version - e.base_version, config.staleness) * p
            for e, p in zip(entries, shares, strict=True)
        ]
        if config.normalize_steps:
            effective = sum(p * e.steps for e, p in zip(entries, shares, strict=True))
            coefs = [c * effective / e.steps for c, e in zip(coefs, entries, strict=True)]
        return coefs

    def _apply(self, entries: list[Buffered], **info: Any) -> None:
        """Publish the server step along sum_j coef_j delta_j (and the p-weighted mean of the
        clients' buffers)."""
        model = self.ctx.model
        if self._deltas is None or self._buffers is None:
            self._deltas = StreamingAccumulator(model.params.numel(), dtype=model.params.dtype)
            self._buffers = StreamingAccumulator(model.buffers.numel(), dtype=model.buffers.dtype)
        self._deltas.reset()
        self._buffers.reset()
        coefs = self.coefficients(entries)
        shares = self.shares(entries)
        for entry, coef, share in zip(entries, coefs, shares, strict=True):
            self._deltas.add(entry.delta, coef)
            if entry.buffers is not None and model.buffers.numel():
                self._buffers.add(entry.buffers, share)
        params = self.step.apply(model.params, self._deltas.sum)
        buffers = self._buffers.mean() if self._buffers.count else model.buffers
        self.ctx.publish(
            params,
            buffers,
            **info,
            updates=len(entries),
            clients=[e.client for e in entries],
            steps=[e.steps for e in entries],
            staleness=[model.version - e.base_version for e in entries],
        )

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Speed estimates, client states, open groups and every held update (as tensors)."""
        return {
            **super().state_dict(),
            "clients": {
                str(c): {
                    "speed": r.speed,
                    "steps": r.steps,
                    "started": r.started,
                    "state": r.state,
                    "group": r.group,
                }
                for c, r in sorted(self.clients.items())
            },
            "planner": self.planner.state_dict(),
            "waiting": {
                str(gid): [e.to_state() for e in entries]
                for gid, entries in sorted(self.waiting.items())
            },
            "late": [e.to_state() for e in self.late],
            "server_step": self.step.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        super().load_state_dict(state)
        self.clients = {
            int(c): CompassClient(
                None if r["speed"] is None else float(r["speed"]),
                int(r["steps"]),
                float(r["started"]),
                r["state"],
                int(r["group"]),
            )
            for c, r in state["clients"].items()
        }
        self.planner.load_state_dict(state["planner"])
        self.waiting = {
            int(gid): [Buffered.from_state(e) for e in entries]
            for gid, entries in state["waiting"].items()
        }
        self.late = [Buffered.from_state(e) for e in state["late"]]
        self.step.load_state_dict(state["server_step"])
