"""The update-transform contract: what a client does to its update between local work and upload.

A transform (`clients/transforms/`, one module each, registered by name) takes the Update a
technique produced and returns the one that travels; it states which payload kinds it accepts,
which kind it produces, and so what it does to the bytes sent. Tasks list the transforms to
apply, in order (`Task.transforms`), each with its typed options.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Generic, TypeVar

from fedcore.clients.techniques.base import TaskError, decode_params
from fedcore.records import TransformSpec, Update

Options = TypeVar("Options")


class UpdateTransform(ABC, Generic[Options]):
    """One transform; stateless (a transform that needs randomness draws it from the task)."""

    name: ClassVar[str]
    #: The dataclass of its options.
    options_type: ClassVar[type[Any]]
    #: Payload kinds it can take.
    accepts: ClassVar[tuple[str, ...]] = ("dense", "sparse")

    def decode(self, spec: TransformSpec) -> Options:
        """Typed options, or TaskError naming the key."""
        return decode_params(self.options_type, spec.options, f"task.transforms[{self.name}]")

    def produces(self, kind: str) -> str:
        """The payload kind out, given the kind in (unchanged by default)."""
        return kind

    @abstractmethod
    def apply(self, update: Update, options: Options, numel: int) -> Update:
        """The transformed update (for a model of `numel` parameters)."""


TRANSFORMS: dict[str, type[UpdateTransform[Any]]] = {}

T = TypeVar("T", bound=type[UpdateTransform[Any]])


def register_transform(cls: T) -> T:
    """Class decorator: make a transform findable by its `name` (names are unique)."""
    existing = TRANSFORMS.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"update transform {cls.name!r} is already registered by {existing}")
    TRANSFORMS[cls.name] = cls
    return cls


def transform_type(name: str) -> type[UpdateTransform[Any]]:
    """The transform registered as `name`, or TaskError listing the known ones."""
    if name not in TRANSFORMS:
        raise TaskError(
            f"task.transforms: unknown update transform {name!r}; known: {sorted(TRANSFORMS)}"
        )
    return TRANSFORMS[name]
