"""The update-transform contract: what a client does to its update between local work and upload.

A transform (`clients/transforms/`, one module each, registered by name) takes the Update a
technique produced and returns the one that travels; it states which payload kinds it accepts,
which kind it produces, and so what it does to the bytes sent. Tasks list the transforms to
apply, in order (`Task.transforms`), each with its typed options.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Generic, TypeVar

from fedcore.clients.registry import Registry, decode_params
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


#: Update transforms by name; `register_transform` is the class decorator that adds one.
TRANSFORMS: Registry[type[UpdateTransform[Any]]] = Registry("update transform", "task.transforms")
register_transform = TRANSFORMS.register
transform_type = TRANSFORMS.get
