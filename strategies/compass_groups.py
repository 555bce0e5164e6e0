"""FedCompass arrival groups: which clients are expected back together, by when, and how many
local steps each one gets so that the members of a group arrive at about the same time.

This is the scheduling half of FedCompass (Li et al., ICLR 2024; APPFL `compass_scheduler.py`)
with no tensors: `GroupPlanner.plan` is the reference's ASSIGN (JOIN the group that allows the
most steps, else CREATE a group aimed at the next return of an open group's fastest member). Closing a group and aggregating is the strategy's job (`fedcompass.py`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Slack for floor() of time ratios, so that 99.99999 steps computed from float times count as 100.
FLOOR_SLACK = 1e-9


@dataclass
class ArrivalGroup:
    """Clients expected back together: `target` is the expected arrival (T_a), `deadline` the
    latest one (T_max) at which the group aggregates whoever has arrived."""

    gid: int
    target: float
    deadline: float
    expected: set[int] = field(default_factory=set)
    arrived: set[int] = field(default_factory=set)

    def members(self) -> set[int]:
        """Everyone assigned to the group: still training or already waiting."""
        return self.expected | self.arrived

    def to_json(self) -> dict[str, Any]:
        """JSON-able form for checkpoints (sets as sorted lists)."""
        return {
            "gid": self.gid,
            "target": self.target,
            "deadline": self.deadline,
            "expected": sorted(self.expected),
            "arrived": sorted(self.arrived),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ArrivalGroup:
        """Inverse of `to_json`."""
        return cls(
            int(data["gid"]),
            float(data["target"]),
            float(data["deadline"]),
            {int(c) for c in data["expected"]},
            {int(c) for c in data["arrived"]},
        )


@dataclass(frozen=True)
class StepBounds:
    """Local steps per task lie in [q_min, q_max]; a group's deadline is `latest_time_factor`
    times its creator's expected duration after its creation."""

    q_min: int
    q_max: int
    latest_time_factor: float


class GroupPlanner:
    """The open arrival groups, and the rule that places a client into one of them."""

    def __init__(self, bounds: StepBounds) -> None:
        self.bounds = bounds
        self.groups: dict[int, ArrivalGroup] = {}
        self.next_gid = 0

    def plan(
        self, client: int, speed: float, now: float, speeds: Mapping[int, float]
    ) -> tuple[ArrivalGroup, int, bool]:
        """Put `client` (estimated `speed` seconds per step) into a group; return the group, its
        local steps, and whether the group was created for it (and so needs a deadline timer).
        `speeds` holds the estimates of the open groups' members."""
        joined = self._join(speed, now)
        if joined is not None:
            group, steps = joined
            group.expected.add(client)
            return group, steps, False
        steps = self._choose_steps(speed, now, speeds) if self.groups else self.bounds.q_max
        return self._create(client, speed, now, steps), steps, True

    def _join(self, speed: float, now: float) -> tuple[ArrivalGroup, int] | None:
        """The open group allowing the most steps within [q_min, q_max] (the earliest-created
        one on a tie); joining moves neither its target nor its deadline."""
        best: tuple[ArrivalGroup, int] | None = None
        for gid in sorted(self.groups):
            group = self.groups[gid]
            steps = math.floor((group.target - now) / speed + FLOOR_SLACK)
            if self.bounds.q_min <= steps <= self.bounds.q_max and (
                best is None or steps > best[1]
            ):
                best = (group, steps)
        return best

    def _choose_steps(self, speed: float, now: float, speeds: Mapping[int, float]) -> int:
        """Steps that bring the client back when the fastest member of an open group would
        next return after a q_max task: the largest such count <= q_max, raised to q_min; q_max
        when every group's is larger."""
        chosen = -1
        for gid in sorted(self.groups):
            group = self.groups[gid]
            if now >= group.deadline:
                continue
            fastest = min(speeds[member] for member in group.members())
            estimate = group.deadline + fastest * self.bounds.q_max
            steps = math.floor((estimate - now) / speed + FLOOR_SLACK)
            if steps <= self.bounds.q_max:
                chosen = max(chosen, steps)
        if chosen < 0:
            return self.bounds.q_max
        return max(chosen, self.bounds.q_min)

    def _create(self, client: int, speed: float, now: float, steps: int) -> ArrivalGroup:
        duration = steps * speed
        group = ArrivalGroup(
            self.next_gid,
            now + duration,
            now + self.bounds.latest_time_factor * duration,
            {client},
        )
        self.groups[group.gid] = group
        self.next_gid += 1
        return group

    def state_dict(self) -> dict[str, Any]:
        """The open groups and the next group id, JSON-able."""
        return {
            "next_gid": self.next_gid,
            "groups": [self.groups[gid].to_json() for gid in sorted(self.groups)],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        self.next_gid = int(state["next_gid"])
        groups = (ArrivalGroup.from_json(g) for g in state["groups"])
        self.groups = {group.gid: group for group in groups}
