"""The update-transform contract: what a client does to its update between local work and upload.

A transform (`clients/transforms/`, one module each, registered by name) takes the Update a
technique produced and returns the one that travels; it states which payload kinds it accepts,
which kind it produces, and so what it does to the bytes sent. Tasks list the transforms to
apply, in order (`Task.transforms`), each with its typed options; a client's own settings for a
transform can only tighten the task's (`tighten`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import torch

from fedcore.clients.registry import Registry, decode_params
from fedcore.records import TransformSpec, Update

Options = TypeVar("Options")


@dataclass(frozen=True)
class TransformContext:
    """What a transform may use besides the update: the model's parameter count, and the
    client's private randomness for this task (a generator never derived from the task's seed,
    which the server knows: `clients/trainer.py` says where it comes from)."""

    numel: int
    private_generator: Callable[[], torch.Generator]


class UpdateTransform(ABC, Generic[Options]):
    """One transform; stateless (randomness comes from the task or the context)."""

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

    def tighten(self, task: Options, own: Options) -> Options:
        """The options to apply when the task asks for `task` and the client's own settings are
        `own`: whichever is stricter, field by field. A transform without a notion of strict
        takes no client settings."""
        raise ValueError(f"update transform {self.name!r} takes no client-side settings")

    @abstractmethod
    def apply(self, update: Update, options: Options, context: TransformContext) -> Update:
        """The transformed update."""


#: Update transforms by name; `register_transform` is the class decorator that adds one.
TRANSFORMS: Registry[type[UpdateTransform[Any]]] = Registry("update transform", "task.transforms")
register_transform = TRANSFORMS.register
transform_type = TRANSFORMS.get
