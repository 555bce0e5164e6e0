"""Synchronous rounds as an event policy: sample a cohort, wait for it (or its deadline), aggregate.

Subclasses decide what a task carries and how arrivals are combined; the round bookkeeping
(sampling, deadlines, partial cohorts, lost clients) lives here once. Arrivals are absorbed in
ascending client order whatever order the network delivers them in (`ClientOrder`), so a
round's float sums, and the model, are the same bits in simulation and in any deployment.

Each update is shrunk, before it is absorbed, to at most `norm_bound` times the median norm
of recent updates (`NormBound`), so that one client cannot move the model further than a
typical client does, whatever it sends.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from fedcore.config import TrainingConfig
from fedcore.records import Task
from fedcore.strategies.base import Arrival, Strategy
from fedcore.typed_config import require

ROUND_TIMER = "round-deadline"
#: Update norms the norm bound's median is taken over (the most recent, in client order).
NORM_WINDOW = 64
#: Fewer recent norms than this: a round's updates wait for its close, and the bound is the
#: median over them too.
NORM_HISTORY = 3


@dataclass
class RoundConfig:
    """How a synchronous round is formed and when it closes."""

    clients_per_round: int = 10
    #: Seconds after which a round closes with the updates it has (0: wait for all).
    round_timeout: float = 0.0
    #: Share of the round's clients a timed-out round needs to publish.
    min_fraction: float = 0.5
    #: Updates are shrunk to this multiple of the recent median update norm (0: no bound).
    norm_bound: float = 1.0
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def __post_init__(self) -> None:
        require(
            self.clients_per_round >= 1, "clients_per_round", "must be >= 1", self.clients_per_round
        )
        require(
            self.round_timeout >= 0,
            "round_timeout",
            "must be >= 0 (0: no deadline)",
            self.round_timeout,
        )
        require(0 < self.min_fraction <= 1, "min_fraction", "must be in (0, 1]", self.min_fraction)
        require(
            self.norm_bound == 0 or self.norm_bound >= 1,
            "norm_bound",
            "must be 0 (no bound) or >= 1 (a multiple of the median update norm)",
            self.norm_bound,
        )


class ClientOrder:
    """Releases a round's arrivals in ascending client order: an arrival waits (held through
    `keep`, on disk when large) until every lower-numbered member has arrived or dropped out."""

    def __init__(self, keep: Callable[[Arrival], Arrival]) -> None:
        self._keep = keep
        self._order: list[int] = []
        self._next = 0
        self._dropped: set[int] = set()
        self._waiting: dict[int, Arrival] = {}

    def expect(self, clients: Iterable[int], hold: bool = False) -> None:
        """Start a round awaiting `clients`, forgetting anything held; with `hold`, everything
        waits for `rest()`."""
        self._order = sorted(clients)
        self._next = len(self._order) if hold else 0
        self._dropped = set()
        self._waiting = {}

    def arrive(self, arrival: Arrival) -> list[Arrival]:
        """Take an arrival; return those now due, in client order."""
        client = arrival.update.client_id
        self._waiting[client] = arrival
        due = self._release()
        if client in self._waiting:
            self._waiting[client] = self._keep(arrival)
        return due

    def drop(self, client: int) -> list[Arrival]:
        """A member will not arrive; return the arrivals that no longer wait for it."""
        self._dropped.add(client)
        return self._release()

    def rest(self) -> list[Arrival]:
        """Everything still held, in client order (the round closes without the missing)."""
        due = [self._waiting.pop(client) for client in sorted(self._waiting)]
        self._next = len(self._order)
        return due

    def _release(self) -> list[Arrival]:
        due = []
        while self._next < len(self._order):
            client = self._order[self._next]
            if client in self._waiting:
                due.append(self._waiting.pop(client))
            elif client not in self._dropped:
                break
            self._next += 1
        return due


class NormBound:
    """Shrinks updates to `multiple` x the median norm of the last NORM_WINDOW updates: fixed
    for a round when it opens, or, with too few norms yet, set at its close over its own."""

    def __init__(self, multiple: float) -> None:
        self.multiple = multiple
        self.norms: list[float] = []
        self.bound: float | None = None
        #: Updates of the current round shrunk so far.
        self.shrunk = 0
        self._round: dict[int, float] = {}

    def open_round(self) -> bool:
        """Fix this round's bound from the history; False when the round must wait for it."""
        self._round = {}
        self.shrunk = 0
        self.bound = self._median_bound(self.norms) if len(self.norms) >= NORM_HISTORY else None
        return self.bound is not None or not self.multiple

    def arrived(self, arrival: Arrival) -> None:
        """Note an arrival's norm for the history (and a waiting round's bound)."""
        if arrival.norm is not None:
            self._round[arrival.update.client_id] = arrival.norm

    def close_round(self) -> None:
        """Set a waiting round's bound over the history and its own norms; extend the history."""
        mine = [self._round[client] for client in sorted(self._round)]
        if self.bound is None:
            self.bound = self._median_bound(self.norms + mine)
        self.norms = (self.norms + mine)[-NORM_WINDOW:]

    def apply(self, arrival: Arrival) -> Arrival:
        """`arrival` of this round, shrunk to the bound if it exceeds it (by the norm noted when
        it arrived: a held arrival's vector may since have moved to disk)."""
        norm, bound = self._round.get(arrival.update.client_id), self.bound
        if not self.multiple or norm is None or bound is None or norm <= bound:
            return arrival
        self.shrunk += 1
        return replace(arrival, scale=bound / norm)

    def _median_bound(self, norms: list[float]) -> float | None:
        return self.multiple * float(np.median(norms)) if norms and self.multiple else None


class SynchronousRounds(Strategy):
    """Round r: K idle clients train from model r; the round closes when all K return, or at its
    deadline with at least `min_fraction` of them; then `aggregate()` gives model r + 1."""

    def __init__(self, config: RoundConfig, seed: int) -> None:
        super().__init__(seed)
        self.config = config
        self.round = 0
        self.cohort: set[int] = set()
        self.arrived: set[int] = set()
        self.in_round = False
        self._order = ClientOrder(lambda arrival: self.ctx.keep(arrival))
        self.norm_bound = NormBound(config.norm_bound)

    def on_start(self) -> None:
        """Open the first round (or re-dispatch the one a checkpoint interrupted)."""
        if self.in_round:
            self._abandon_round()
        else:
            self._try_open_round()

    def on_client_idle(self, client_id: int) -> None:
        """A newly idle client may complete the number needed to open a round."""
        if not self.in_round:
            self._try_open_round()

    def on_update(self, arrival: Arrival) -> None:
        """Fold one cohort member's update in; close the round when the cohort is complete."""
        client = arrival.update.client_id
        if not self.in_round or client not in self.cohort or client in self.arrived:
            return
        self.norm_bound.arrived(arrival)
        self._absorb_all(self._order.arrive(arrival))
        self.arrived.add(client)
        if self.arrived == self.cohort:
            self._close_round()

    def on_timer(self, key: str) -> None:
        """At the deadline, close with the members that returned, or start over without them."""
        if key != f"{ROUND_TIMER}-{self.round}" or not self.in_round:
            return
        if len(self.arrived) >= max(1, self.config.min_fraction * len(self.cohort)):
            self._close_round()
        else:
            self._abandon_round()

    def on_task_lost(self, task: Task) -> None:
        """A lost member shrinks the cohort: the round may now be complete, or, with nobody
        left, is abandoned for a new one."""
        if not self.in_round or task.client_id not in self.cohort:
            return
        self.cohort.discard(task.client_id)
        self._absorb_all(self._order.drop(task.client_id))
        if self.arrived and self.arrived == self.cohort:
            self._close_round()
        elif not self.cohort:
            self._abandon_round()

    def _try_open_round(self) -> None:
        idle = self.ctx.idle_clients()
        wanted = self.config.clients_per_round
        if len(idle) < wanted:
            return
        chosen = sorted(int(c) for c in self.rng.choice(idle, size=wanted, replace=False))
        self.round += 1
        self.in_round = True
        self.cohort = set(chosen)
        self.arrived = set()
        self._order.expect(chosen, hold=not self.norm_bound.open_round())
        self.reset_round()
        deadline = self.ctx.now + self.config.round_timeout if self.config.round_timeout else None
        for client in chosen:
            self.ctx.dispatch(self.make_task(client, deadline))
        if deadline is not None:
            self.ctx.set_timer(deadline, f"{ROUND_TIMER}-{self.round}")

    def _close_round(self) -> None:
        self.norm_bound.close_round()
        self._absorb_all(self._order.rest())
        params, buffers = self.aggregate()
        self.in_round = False
        self.ctx.publish(
            params,
            buffers,
            round=self.round,
            participants=len(self.arrived),
            shrunk=self.norm_bound.shrunk,
            **self.round_info(),
        )
        self.reset_round()
        self._try_open_round()

    def _abandon_round(self) -> None:
        """Drop the round in flight, and what it held, for a new one."""
        self.in_round = False
        self._order.expect(())
        self.reset_round()
        self._try_open_round()

    def _absorb_all(self, arrivals: list[Arrival]) -> None:
        for arrival in arrivals:
            self.absorb(self.norm_bound.apply(arrival))

    def make_task(self, client_id: int, deadline: float | None) -> Task:
        """The task for one cohort member: local SGD from the current model."""
        return self.config.training.task(client_id, self.ctx.model.version, self.rng, deadline)

    @abstractmethod
    def reset_round(self) -> None:
        """Drop whatever was accumulated for the current round."""

    @abstractmethod
    def absorb(self, arrival: Arrival) -> None:
        """Take one arrival into the round's aggregate."""

    @abstractmethod
    def aggregate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next global (params, buffers) from everything absorbed this round."""

    def round_info(self) -> dict[str, Any]:
        """Extra facts about the last `aggregate()` to publish with the model (metrics, ledger)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Round counter and cohort; a round in flight is re-dispatched on resume."""
        return {
            **super().state_dict(),
            "round": self.round,
            "in_round": self.in_round,
            "norms": self.norm_bound.norms,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the round counter; on_start re-opens the interrupted round."""
        super().load_state_dict(state)
        self.round = int(state["round"])
        self.in_round = bool(state["in_round"])
        self.norm_bound.norms = [float(norm) for norm in state.get("norms", [])]
