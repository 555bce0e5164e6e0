"""The client-technique contract: the client half of an algorithm, as a strategy is the server half.

A technique is one module (`clients/techniques/`), registered by name with `@register`. It has
typed parameters, decoded once from `Task.hyper` (an unknown key, a non-integer for an integer,
or a value its checks refuse is a `TaskError` naming the key); its local work (`run`); its
simulated cost in minibatch passes; and optional client state that survives a restart
(`state_dict` / `load_state_dict`). Techniques share one SGD loop (`clients/sgd.py`).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar, get_type_hints

import torch

from fedcore.data.split import Split
from fedcore.records import Task, Update
from fedcore.typed_config import ConfigError

if TYPE_CHECKING:
    from fedcore.clients.trainer import LocalTrainer

P = TypeVar("P")


class TaskError(ConfigError):
    """A task asks for something no client can do (unknown technique or transform, a parameter
    it does not take, or a value of the wrong type or range); the message names the key."""


def decode_params(params_type: type[P], values: Mapping[str, float], where: str) -> P:
    """An instance of dataclass `params_type` from a task's float map: keys must be its fields,
    integers integral, booleans 0 or 1; its `__post_init__` checks the values."""
    hints = get_type_hints(params_type)
    fields = {f.name for f in dataclasses.fields(params_type)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, raw in values.items():
        if key not in fields:
            raise TaskError(
                f"{where}.{key}: unknown parameter (known: {', '.join(sorted(fields)) or 'none'})"
            )
        value = float(raw)
        kind = hints[key]
        if kind is bool:
            if value not in (0.0, 1.0):
                raise TaskError(f"{where}.{key}: must be 0 or 1 (a flag), got {raw!r}")
            kwargs[key] = bool(value)
        elif kind is int:
            if not value.is_integer():
                raise TaskError(f"{where}.{key}: must be an integer, got {raw!r}")
            kwargs[key] = int(value)
        else:
            kwargs[key] = value
    try:
        return params_type(**kwargs)
    except ValueError as error:
        raise TaskError(f"{where}.{error}") from None


def encode_params(params: Any) -> dict[str, float]:
    """A params dataclass as the float map a Task carries (the inverse of `decode_params`)."""
    return {k: float(v) for k, v in dataclasses.asdict(params).items()}


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


TECHNIQUES: dict[str, type[Technique[Any]]] = {}

T = TypeVar("T", bound=type[Technique[Any]])


def register(cls: T) -> T:
    """Class decorator: make a technique findable by its `name` (names are unique)."""
    existing = TECHNIQUES.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"client technique {cls.name!r} is already registered by {existing}")
    TECHNIQUES[cls.name] = cls
    return cls


def technique_type(name: str) -> type[Technique[Any]]:
    """The technique registered as `name`, or TaskError listing the known ones."""
    if name not in TECHNIQUES:
        raise TaskError(
            f"task.technique: unknown client technique {name!r}; known: {sorted(TECHNIQUES)}"
        )
    return TECHNIQUES[name]
