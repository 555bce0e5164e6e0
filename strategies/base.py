"""The event-driven strategy contract.

A strategy is server-side policy: it hears about events (start, a client became idle, an update
arrived, a timer fired) and reacts through a `StrategyContext` (dispatch a task, set a timer,
publish a new global model). It never sees sockets, threads or wall clocks, so the same object
runs under the simulation's virtual clock and under the gRPC deployment's wall clock.
Synchronous rounds, FedAsync, FedBuff and FedCompass are all policies over these four events.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from fedcore.data.split import Split
from fedcore.kernels import StreamingAccumulator
from fedcore.memory import release_file_pages
from fedcore.params import ModelLayout
from fedcore.payloads import DenseDelta, SparseDelta
from fedcore.records import Task, Update


@dataclass(frozen=True)
class GlobalModel:
    """One published global model. Tensors are never modified after publication."""

    params: torch.Tensor
    buffers: torch.Tensor
    version: int
    _digests: dict[int, dict[str, dict[int, str]]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def chunk_digests(self, chunk_bytes: int) -> dict[str, dict[int, str]]:
        """The cache of this model's chunk sha256s for chunks of `chunk_bytes`, by vector name
        and element offset (see `fedcore.serialization.chunk_digests`): valid for the model's
        life, since it never changes."""
        return self._digests.setdefault(chunk_bytes, {})


@dataclass(frozen=True)
class ServerResources:
    """What the server holds besides the model: its own small data set (`proxy`, None when the
    config gives none; FedLAW learns its aggregation weights on it) and the model's constructor."""

    build_model: Callable[[], nn.Module]
    layout: ModelLayout
    proxy: Split | None = None


@dataclass(frozen=True)
class Arrival:
    """An update that passed validation, with the model it started from and its staleness.

    Strategies get the payload as it came (`update.payload`: dense, sparse or seeds); `delta`
    is its dense form, made on first use, for strategies that need one. `scale` below 1 says
    the server shrinks the update (a norm bound): `delta` and `fold_into` apply it."""

    update: Update
    base: GlobalModel
    staleness: int
    scale: float = 1.0

    @cached_property
    def delta(self) -> torch.Tensor:
        """The payload as a dense delta over the model's parameters, times `scale`."""
        dense = self._dense()
        return dense if self.scale == 1.0 else dense * self.scale

    @property
    def norm(self) -> float | None:
        """The L2 norm of the update as it came, measured once by validation (None for seed
        payloads, which carry no vector)."""
        payload = self.update.payload
        return payload.norm if isinstance(payload, DenseDelta | SparseDelta) else None

    def fold_into(self, accumulator: StreamingAccumulator, weight: float) -> None:
        """Add `weight` x the delta to a running sum (`weight` to its total), reading a sparse
        payload only where it is non-zero (the same bits as folding its dense form)."""
        payload = self.update.payload
        if isinstance(payload, SparseDelta):
            accumulator.add_sparse(
                payload.positions(self.base.params.numel()), payload.values, weight, self.scale
            )
        else:
            dense = self._dense()
            accumulator.add(dense, weight, self.scale)
            release_file_pages(dense)

    def _dense(self) -> torch.Tensor:
        payload = self.update.payload
        if payload is None:
            raise ValueError(f"the update of client {self.update.client_id} carries no payload")
        return payload.dense(self.base.params.numel())


class StrategyContext(Protocol):
    """What the runtime offers a strategy."""

    @property
    def now(self) -> float:
        """Current time in seconds (virtual in simulation, wall in deployment)."""

    @property
    def model(self) -> GlobalModel:
        """The current global model."""

    @property
    def layout(self) -> ModelLayout:
        """Layout of the model's parameter and buffer vectors."""

    @property
    def num_clients(self) -> int:
        """Clients in the federation (simulated, or enrolled)."""

    def idle_clients(self) -> list[int]:
        """Connected clients with no outstanding task, in ascending id order."""

    def client_speed(self, client_id: int) -> float | None:
        """A client's profiled seconds per local step (simulated profile, or measured at a
        deployed client's join); None when the runtime does not know it."""

    def dispatch(self, task: Task) -> None:
        """Send `task` to its client; the client gets the model of `task.version`."""

    def set_timer(self, at: float, key: str) -> None:
        """Call `on_timer(key)` at time `at` (replacing a pending timer of that key)."""

    def keep(self, arrival: Arrival) -> Arrival:
        """`arrival`, for holding past the event that brought it: its large vectors moved to
        disk when the runtime has a spool, so held updates do not each cost their size in RAM."""

    def publish(self, params: torch.Tensor, buffers: torch.Tensor, **info: Any) -> GlobalModel:
        """Make (params, buffers) the next global model version and return it.

        Publication is the commit point of checkpoints: the server saves `state_dict()` during
        this call, so the strategy's state must already describe the new model when it calls.
        """


class Strategy(ABC):
    """Base class: subclasses implement the event handlers and their checkpointable state."""

    name = "strategy"
    #: Updates more than this many versions old are refused by the runtime as expired.
    max_staleness: int | None = 0
    #: Payload kinds this strategy can aggregate (`fedcore/payloads.py`).
    payloads: tuple[str, ...] = ("dense", "sparse")
    #: Client techniques its tasks name in place of `training.technique` (none: it trains
    #: with the configured one).
    own_techniques: tuple[str, ...] = ()

    @property
    def keeps_client_state(self) -> bool:
        """Its tasks rely on state a client keeps between tasks, so a simulation must play every
        client in one process (no worker pool)."""
        return False

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self._ctx: StrategyContext | None = None

    @property
    def ctx(self) -> StrategyContext:
        """The runtime this strategy is attached to."""
        if self._ctx is None:
            raise RuntimeError(f"strategy {self.name!r} is not attached to a runtime")
        return self._ctx

    def attach(self, ctx: StrategyContext) -> None:
        """Bind to a runtime before the first event."""
        self._ctx = ctx

    def bind_resources(self, resources: ServerResources) -> None:
        """Receive server-side resources once, when the experiment is built. Strategies that
        need one (e.g. a proxy set) check it here and raise ConfigError naming the config key."""

    @abstractmethod
    def on_start(self) -> None:
        """The federation starts, or resumes after `load_state_dict`: tasks outstanding when the
        checkpoint was taken never return, so a resumed strategy re-plans them here."""

    @abstractmethod
    def on_client_idle(self, client_id: int) -> None:
        """A client joined, returned an update, or came back online."""

    @abstractmethod
    def on_update(self, arrival: Arrival) -> None:
        """A validated update arrived."""

    def on_timer(self, key: str) -> None:
        """A timer set through the context fired."""

    def on_task_lost(self, task: Task) -> None:
        """The client of an outstanding task dropped out; the task will not return."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: subclasses extend this."""
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict returned."""
        self.rng.bit_generator.state = state["rng"]
