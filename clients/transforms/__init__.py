"""Update transforms, applied in a task's order after the local work (`base.py` has the contract).

Built-ins: `clip` (norm bound), `ldp` (local differential privacy) and `topk` (sparsify).
Importing this package registers them.
"""

from fedcore.clients.transforms import clip, local_dp, topk
from fedcore.clients.transforms.base import (
    TRANSFORMS,
    TransformContext,
    UpdateTransform,
    register_transform,
    transform_type,
)

__all__ = [
    "TRANSFORMS",
    "TransformContext",
    "UpdateTransform",
    "clip",
    "local_dp",
    "register_transform",
    "topk",
    "transform_type",
]
