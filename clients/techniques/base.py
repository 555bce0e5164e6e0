"""The client-technique contract: the client half of an algorithm, as a strategy is the server half.

A technique is one module (`clients/techniques/`), registered by name with `@register`. It has
typed parameters, decoded once from `Task.hyper` (an unknown key, a non-integer for an integer,
or a value its checks refuse is a `TaskError` naming the key: `clients/registry.py`); its local
work (`run`); its simulated cost in minibatch passes; and optional client state that survives a
restart (`state_dict` / `load_state_dict`). Techniques share one SGD loop (`clients/sgd.py`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

import torch

from fedcore.clients.registry import Registry, decode_params
from fedcore.data.split import Split
from fedcore.records import Task, Update

if TYPE_CHECKING:
    from fedcore.clients.trainer import LocalTrainer

P = TypeVar("P")


class Technique(ABC, Generic[P]):
    """One client technique; an instance lives as long as its client and may keep state."""

    name: ClassVar[str]
    #: The dataclass of this technique's parameters.
    params_type: ClassVar[type[Any]]
    #: The payload kind its updates carry before any transform ("none": metrics only).
    payload: ClassVar[str] = "dense"
    #: Names of the Task.extras tensors it takes.
    extras: ClassVar[tuple[str, ...]] = ()
    #: The client data it works on: its training examples, or its evaluation hold-out.
    data: ClassVar[Literal["train", "holdout"]] = "train"

    def decode(self, task: Task) -> P:
        """The task's typed parameters, or TaskError naming the offending key."""
        return decode_params(self.params_type, task.hyper, f"task.hyper[{self.name}]")

    @abstractmethod
    def run(
        self,
        trainer: LocalTrainer,
        task: Task,
        params: P,
        model: tuple[torch.Tensor, torch.Tensor],
        data: Split,
        reuse_model: bool,
    ) -> Update:
        """Do the local work of `task` from `model` (params, buffers) on `data`. `reuse_model`
        says the caller's params vector may be overwritten (e.g. to hold the delta)."""

    @abstractmethod
    def passes(self, task: Task, params: P, num_examples: int) -> float:
        """What the task costs in minibatch forward/backward passes (the simulated clock charges
        each at the client's seconds per step)."""

    def state_dict(self) -> dict[str, Any]:
        """Client state that must survive a restart (none by default)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""


#: Client techniques by name; `register` is the class decorator that adds one.
TECHNIQUES: Registry[type[Technique[Any]]] = Registry("client technique", "task.technique")
register = TECHNIQUES.register
technique_type = TECHNIQUES.get
