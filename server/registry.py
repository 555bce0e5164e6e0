"""The deployed clients the server knows: one slot per enrolled client (its session, profile,
the tasks parked for it, the model version it holds) and the liveness watch that declares a
client gone when its heartbeats stop. Changes in who is connected are signalled through
`changed`, so the serving loop wakes on events instead of polling."""

from __future__ import annotations

import asyncio
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcore.certs import REVOKED, revoked_clients
from fedcore.records import Task
from fedcore.strategies.base import GlobalModel
from fedcore.typed_config import ConfigError


@dataclass
class Parked:
    """A task waiting for its client to fetch it, with the model it starts from, and the timer
    that expires it (cancelled once the client uploads for it or its session ends)."""

    task: Task
    model: GlobalModel
    task_id: str = field(default_factory=lambda: secrets.token_hex(16))
    expiry: asyncio.TimerHandle | None = None

    def settle(self) -> None:
        """The task no longer needs its expiry timer."""
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None


@dataclass
class ClientSlot:
    """What the server knows of one enrolled client: a training task and an evaluation task
    may be parked at once (the evaluation is handed out first)."""

    number: int
    session: str = ""
    last_seen: float = 0.0
    profile: dict[str, Any] = field(default_factory=dict)
    training: Parked | None = None
    evaluation: Parked | None = None
    #: The model version the client said it holds in full (None: none).
    held_version: int | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    told_done: bool = False

    def parked(self, task_id: str) -> Parked | None:
        """The parked task named `task_id`, if any."""
        for parked in (self.evaluation, self.training):
            if parked is not None and parked.task_id == task_id:
                return parked
        return None

    def next_task(self) -> Parked | None:
        """The task to hand out next: an evaluation before training."""
        return self.evaluation or self.training

    def take(self, parked: Parked) -> None:
        """The client uploads for `parked`: it is no longer waiting (the upload has a deadline
        of its own)."""
        parked.settle()
        if self.evaluation is parked:
            self.evaluation = None
        elif self.training is parked:
            self.training = None

    def forget(self) -> None:
        """The session ended: nothing parked survives it."""
        for parked in (self.training, self.evaluation):
            if parked is not None:
                parked.settle()
        self.session = ""
        self.training = self.evaluation = None
        self.held_version = None


class Registry:
    """Slots by client number and name, revoked clients, and connection changes as an event."""

    def __init__(self, enrolled: list[str], cert_dir: Path | None = None) -> None:
        self.numbers = {client: number for number, client in enumerate(enrolled)}
        self.names = dict(enumerate(enrolled))
        self.slots = {number: ClientSlot(number) for number in self.names}
        #: Set whenever a client joins, leaves or is declared gone.
        self.changed = asyncio.Event()
        self.cert_dir = cert_dir
        self.revoked: set[str] = set()
        self._revocations_seen: tuple[int, int] | None = None

    def refresh_revocations(self) -> list[int]:
        """Re-read revoked.txt when it changed; the numbers of clients newly revoked."""
        if self.cert_dir is None:
            return []
        path = self.cert_dir / REVOKED
        try:
            status = path.stat()
            seen: tuple[int, int] | None = (status.st_mtime_ns, status.st_size)
        except FileNotFoundError:
            seen = None
        if seen == self._revocations_seen:
            return []
        self._revocations_seen = seen
        now = revoked_clients(self.cert_dir) & set(self.numbers)
        added, self.revoked = now - self.revoked, now
        return sorted(self.numbers[name] for name in added)

    def connected(self) -> int:
        """Clients with a live session."""
        return sum(1 for slot in self.slots.values() if slot.session)

    def to_state(self) -> dict[str, Any]:
        """The enrolled clients in number order and the last profile each joined with."""
        return {
            "clients": [self.names[n] for n in sorted(self.names)],
            "profiles": {self.names[n]: s.profile for n, s in self.slots.items() if s.profile},
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Take back the profiles of a checkpoint taken with the same enrolment."""
        enrolled = [self.names[n] for n in sorted(self.names)]
        if state.get("clients") != enrolled:
            raise ConfigError(
                f"deployment.certs: the enrolled clients changed since the checkpoint "
                f"({state.get('clients')} then, {enrolled} now); client numbers would not "
                "match their data partitions"
            )
        for name, profile in state.get("profiles", {}).items():
            self.slots[self.numbers[name]].profile = profile

    async def watch_liveness(
        self,
        timeout: float,
        now: Callable[[], float],
        gone: Callable[[int], None],
        revoked: Callable[[int], None],
    ) -> None:
        """Declare clients gone (calling `gone(number)`) when their heartbeats stop, and revoked
        (`revoked(number)`, their session ended) within a check of their revocation. A check
        that wakes late means the loop itself was blocked (a long aggregation): heartbeats that
        came meanwhile are still queued, so that check judges nobody."""
        interval = min(1.0, timeout / 3)
        previous = now()
        while True:
            await asyncio.sleep(interval)
            moment = now()
            stalled, previous = moment - previous > 2 * interval, moment
            for number in self.refresh_revocations():
                self.slots[number].forget()
                self.slots[number].wake.set()
                revoked(number)
                self.changed.set()
                log(f"client {self.names[number]} revoked: its certificate is refused from now on")
            if stalled:
                continue
            for slot in self.slots.values():
                if slot.session and moment - slot.last_seen > timeout:
                    slot.forget()
                    gone(slot.number)
                    self.changed.set()
                    log(
                        f"client {self.names[slot.number]} gone (no heartbeat for {timeout:g} s); "
                        f"{self.connected()} of {len(self.names)} connected"
                    )


def log(message: str) -> None:
    """One line for the operator, on stderr (stdout carries the progress display)."""
    print(f"fedcore server: {message}", file=sys.stderr, flush=True)
