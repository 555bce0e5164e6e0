"""Runs Tasks on a client: the task's technique does the local work, then the task's update
transforms turn the result into the payload that travels. One implementation serves simulated
clients, deployed clients and anything else that hosts fedcore's client half."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from fedcore.clients.techniques import TaskError, Technique, technique_type
from fedcore.clients.transforms import TransformContext, transform_type
from fedcore.data.split import Split
from fedcore.params import BoundModule
from fedcore.privacy import derived_seed, fresh_seed
from fedcore.records import DOWNLOADS, MASK, Task, TransformSpec, Update

#: The seed of a task's private randomness (what a transform's noise is drawn from).
PrivateSeed = Callable[[Task], int]

#: Separates the simulation's private streams from every other stream keyed by the run seed.
_PRIVATE_STREAM = 0x5052_4956
#: The private stream update transforms draw from; techniques name their own.
TRANSFORM_STREAM = 1


def fresh_entropy(task: Task) -> int:
    """A deployed client's private randomness: the operating system's entropy per task, so
    nothing the server knows or sends decides the noise."""
    return fresh_seed()


def keyed_by_run(run_seed: int) -> PrivateSeed:
    """A simulation's private randomness: a stream of its own keyed by the run seed, the client
    and the task, so that seeded runs repeat bit for bit."""

    def seed(task: Task) -> int:
        return derived_seed(run_seed, _PRIVATE_STREAM, task.client_id, task.version, task.seed)

    return seed


def expected_payload(task: Task) -> str:
    """The payload kind `task`'s upload must carry, after decoding everything the task asks for:
    TaskError names an unknown technique, transform, parameter or extra tensor, or a transform
    that cannot take the payload before it."""
    technique = technique_type(task.technique)()
    technique.decode(task)
    allowed = set(technique.extras) | ({MASK} if task.download == "masked" else set())
    unknown = sorted(set(task.extras) - allowed)
    if unknown:
        raise TaskError(
            f"task.extras.{unknown[0]}: technique {task.technique!r} takes no such tensor "
            f"(it takes {sorted(allowed) or 'none'})"
        )
    if task.download not in DOWNLOADS:
        raise TaskError(f"task.download: must be one of {list(DOWNLOADS)}, got {task.download!r}")
    if task.download == "masked" and MASK not in task.extras:
        raise TaskError(f"task.extras.{MASK}: a masked download needs the mask")
    kind = technique.payload
    for spec in task.transforms:
        transform = transform_type(spec.name)()
        transform.decode(spec)
        if kind not in transform.accepts:
            raise TaskError(
                f"task.transforms[{spec.name}]: takes {list(transform.accepts)} payloads, "
                f"the update is {kind}"
            )
        kind = transform.produces(kind)
    return kind


class LocalTrainer:
    """One client's model instance (flat-bound, reused across tasks) and its techniques, each
    created on first use and kept, so a technique's client state lives as long as the client."""

    def __init__(
        self,
        build: Callable[[], nn.Module],
        device: torch.device | str = "cpu",
        eval_batch_size: int = 1024,
        private_seed: PrivateSeed = fresh_entropy,
        own_transforms: Mapping[str, Mapping[str, float]] | None = None,
    ) -> None:
        """`own_transforms` are the client's own settings by transform name: each tightens the
        task's transform of that name, and is applied after the task's when the task lacks it."""
        self.device = torch.device(device)
        self.private_seed = private_seed
        self.own_transforms = {
            name: TransformSpec(name, dict(options))
            for name, options in (own_transforms or {}).items()
        }
        # Bad options, or a transform that takes no client settings, are refused now.
        for spec in self.own_transforms.values():
            transform = transform_type(spec.name)()
            transform.tighten(transform.decode(spec), transform.decode(spec))
        self.bound = BoundModule(build().to(self.device))
        self.eval_batch_size = eval_batch_size
        self._momentum: torch.Tensor | None = None
        self._techniques: dict[str, Technique[Any]] = {}

    def technique(self, name: str) -> Technique[Any]:
        """This client's instance of technique `name`."""
        if name not in self._techniques:
            self._techniques[name] = technique_type(name)()
        return self._techniques[name]

    def velocity(self) -> torch.Tensor:
        """The momentum buffer, zeroed; allocated on first use (evaluators never need it)."""
        if self._momentum is None:
            self._momentum = torch.zeros_like(self.bound.params)
        return self._momentum.zero_()

    def run(
        self,
        task: Task,
        params: torch.Tensor,
        buffers: torch.Tensor,
        data: Split,
        reuse_params: bool = False,
    ) -> Update:
        """Run `task` from (params, buffers) on `data` and apply its transforms. `reuse_params`
        says `params` is the caller's own copy, free to overwrite (a deployed client's download
        buffer then holds the delta instead of a new allocation per task)."""
        technique = self.technique(task.technique)
        typed = technique.decode(task)
        update = technique.run(self, task, typed, (params, buffers), data, reuse_params)
        if update.payload is None:
            return update
        context = TransformContext(
            self.bound.layout.params.numel, lambda: self.private_generator(task, TRANSFORM_STREAM)
        )
        asked = {spec.name for spec in task.transforms}
        own_only = [spec for name, spec in self.own_transforms.items() if name not in asked]
        for spec in (*task.transforms, *own_only):
            transform = transform_type(spec.name)()
            options = transform.decode(spec)
            own = self.own_transforms.get(spec.name)
            if own is not None:
                options = transform.tighten(options, transform.decode(own))
            update = transform.apply(update, options, context)
        return update

    def private_generator(self, task: Task, stream: int) -> torch.Generator:
        """A CPU generator of this client's private randomness for `task`: one independent
        stream per use (`stream`), so a technique's and a transform's noise never coincide."""
        return torch.Generator().manual_seed(derived_seed(self.private_seed(task), stream))

    def passes(self, task: Task, num_examples: int) -> float:
        """What `task` costs in minibatch passes on `num_examples` examples."""
        technique = self.technique(task.technique)
        return technique.passes(task, technique.decode(task), num_examples)

    def state_dict(self) -> dict[str, Any]:
        """Every technique's client state, by technique name (empty states left out)."""
        states = {name: t.state_dict() for name, t in sorted(self._techniques.items())}
        return {name: state for name, state in states.items() if state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        for name, saved in state.items():
            self.technique(name).load_state_dict(saved)
