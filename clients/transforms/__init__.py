"""Update transforms, applied in a task's order after the local work (`base.py` has the contract).

Built-ins: `clip` (norm bound) and `topk` (sparsify). Importing this package registers them.
"""

from fedcore.clients.transforms import clip, topk
from fedcore.clients.transforms.base import (
    TRANSFORMS,
    UpdateTransform,
    register_transform,
    transform_type,
)

__all__ = ["TRANSFORMS", "UpdateTransform", "clip", "register_transform", "topk", "transform_type"]
