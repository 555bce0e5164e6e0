"""Nested state (dicts with string keys, lists, scalars, tensors) on disk without pickle: tensors
as fedcore frames, everything else as JSON. Server checkpoints (`server/checkpoints.py`) and a
client's technique state (`fedcore client --state`) both use it; files are written atomically
(write, fsync, rename), and reading goes through the bounded frame parser."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from fedcore.bounded import json_loads
from fedcore.serialization import FrameError, decode_many, frames_of

TENSOR_REF = "__tensor__"
#: The frame holding a state file's JSON document (as uint8 bytes).
DOCUMENT = "state/json"
#: Nesting of saved state documents: strategy and technique states are a few levels deep.
MAX_STATE_DEPTH = 32


class StateFileError(ValueError):
    """Saved state cannot be used; the message says why."""


def write_atomically(path: Path, data: bytes | Iterable[bytes | memoryview]) -> str:
    """Write `data` (bytes, or pieces streamed one at a time so a large file is never held
    whole), fsync, then rename over `path`: readers see the old file or the new one. Returns the
    sha256 of what was written."""
    temporary = path.with_name(f".{path.name}.tmp")
    digest = hashlib.sha256()
    try:
        with temporary.open("wb") as handle:
            for piece in [data] if isinstance(data, bytes) else data:
                digest.update(piece)
                handle.write(piece)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)  # no debris, and its space back on a full disk
        raise
    return digest.hexdigest()


def pack(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """`value` as JSON-able data, its tensors moved into `tensors` and replaced by references."""
    if isinstance(value, torch.Tensor):
        key = f"state/{len(tensors)}"
        tensors[key] = value.detach().cpu().contiguous()
        return {TENSOR_REF: key}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("checkpointed dicts need string keys")
        return {k: pack(v, tensors) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [pack(v, tensors) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot checkpoint a {type(value).__name__}")


def unpack(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `pack`."""
    if isinstance(value, dict):
        if set(value) == {TENSOR_REF}:
            key = value[TENSOR_REF]
            if key not in tensors:
                raise StateFileError(f"state refers to tensor {key!r}, which is not stored")
            return tensors[key]
        return {k: unpack(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [unpack(v, tensors) for v in value]
    return value


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to one file atomically: its tensors and then its JSON document as frames."""
    tensors: dict[str, torch.Tensor] = {}
    document = json.dumps(pack(state, tensors)).encode()
    tensors[DOCUMENT] = torch.frombuffer(bytearray(document), dtype=torch.uint8)
    write_atomically(path, frames_of(tensors))


def load_state(path: Path) -> dict[str, Any]:
    """The state `save_state` wrote, or StateFileError naming what is wrong with the file."""
    try:
        tensors = decode_many(path.read_bytes())
        raw = tensors.pop(DOCUMENT)
        state = unpack(json_loads(bytes(raw.numpy()), MAX_STATE_DEPTH), tensors)
    except (OSError, KeyError, FrameError, ValueError) as error:
        raise StateFileError(f"{path}: not a usable state file ({error})") from None
    if not isinstance(state, dict):
        raise StateFileError(f"{path}: the saved state is not a mapping")
    return state
