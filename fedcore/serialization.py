"""Tensor frames: a pickle-free, self-checking binary format for tensors on the wire and on disk.

A frame is `MAGIC | u32 header length | JSON header | raw little-endian bytes`. The header names
the tensor, its dtype and full shape, the element offset and count of this chunk, and the
sha256 of the bytes, so a large tensor travels as many small frames. Decoding checks every
claim against the bytes actually present *before* allocating anything.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

MAGIC = b"FCT1"
_LENGTH = struct.Struct("<I")
MAX_HEADER_BYTES = 16 * 1024
MAX_NAME_CHARS = 512
MAX_DIMS = 16

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


class FrameError(ValueError):
    """A frame is malformed, truncated, lies about its size, or fails its checksum."""


@dataclass(frozen=True)
class FrameHeader:
    """What a frame claims about the chunk it carries."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    count: int
    sha256: str

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype the header names."""
        return DTYPES[self.dtype]

    @property
    def nbytes(self) -> int:
        """Bytes of payload this chunk must carry."""
        return self.count * self.torch_dtype.itemsize

    @property
    def total(self) -> int:
        """Elements of the whole tensor this chunk belongs to."""
        return math.prod(self.shape)


def _raw_bytes(tensor: torch.Tensor) -> bytes:
    """Little-endian bytes of a contiguous CPU tensor (bfloat16 via its 16-bit pattern)."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if flat.dtype == torch.bfloat16:
        flat = flat.view(torch.int16)
    array = flat.numpy()
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def encode(
    tensor: torch.Tensor, name: str = "", offset: int = 0, shape: tuple[int, ...] | None = None
) -> bytes:
    """One frame holding `tensor` (or a chunk of a larger tensor of `shape` at `offset`)."""
    if tensor.dtype not in DTYPE_NAMES:
        raise FrameError(f"{name or 'tensor'}: dtype {tensor.dtype} is not supported on the wire")
    payload = _raw_bytes(tensor)
    header = {
        "name": name,
        "dtype": DTYPE_NAMES[tensor.dtype],
        "shape": list(shape if shape is not None else tensor.shape),
        "offset": offset,
        "count": tensor.numel(),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    return MAGIC + _LENGTH.pack(len(head)) + head + payload


def encode_chunks(tensor: torch.Tensor, name: str, chunk_bytes: int) -> Iterator[bytes]:
    """Frames of at most `chunk_bytes` payload each, covering a tensor in order."""
    flat = tensor.detach().reshape(-1)
    step = max(1, chunk_bytes // max(1, flat.element_size()))
    shape = tuple(tensor.shape)
    if flat.numel() == 0:
        yield encode(flat, name, 0, shape)
    for start in range(0, flat.numel(), step):
        yield encode(flat[start : start + step], name, start, shape)


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise FrameError(
            f"frame header field {what!r} must be a non-negative integer, got {value!r}"
        )
    return value


def parse_header(buffer: bytes | memoryview) -> tuple[FrameHeader, int]:
    """Read and validate a frame's header; return it and where the payload starts."""
    view = memoryview(buffer)
    if len(view) < len(MAGIC) + _LENGTH.size:
        raise FrameError(f"truncated frame: {len(view)} bytes, shorter than the frame preamble")
    if bytes(view[: len(MAGIC)]) != MAGIC:
        raise FrameError("not a tensor frame: bad magic bytes")
    (head_len,) = _LENGTH.unpack_from(view, len(MAGIC))
    start = len(MAGIC) + _LENGTH.size
    if head_len > MAX_HEADER_BYTES:
        raise FrameError(
            f"frame header claims {head_len} bytes, above the {MAX_HEADER_BYTES} limit"
        )
    if len(view) < start + head_len:
        raise FrameError("truncated frame: header cut short")
    try:
        raw = json.loads(bytes(view[start : start + head_len]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FrameError(f"frame header is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise FrameError("frame header is not a JSON object")
    dtype = raw.get("dtype")
    if dtype not in DTYPES:
        raise FrameError(f"unknown dtype {dtype!r}; supported: {sorted(DTYPES)}")
    name = raw.get("name", "")
    if not isinstance(name, str) or len(name) > MAX_NAME_CHARS:
        raise FrameError("frame header field 'name' must be a string of at most 512 characters")
    shape = raw.get("shape")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS:
        raise FrameError(f"frame header field 'shape' must be a list of at most {MAX_DIMS} sizes")
    sha = raw.get("sha256")
    if not isinstance(sha, str) or len(sha) != 64:
        raise FrameError("frame header field 'sha256' must be a 64-character hex digest")
    header = FrameHeader(
        name=name,
        dtype=dtype,
        shape=tuple(_int(d, "shape") for d in shape),
        offset=_int(raw.get("offset"), "offset"),
        count=_int(raw.get("count"), "count"),
        sha256=sha,
    )
    if header.offset + header.count > header.total:
        raise FrameError(
            f"{name}: chunk [{header.offset}, {header.offset + header.count}) lies outside a "
            f"tensor of {header.total} elements"
        )
    return header, start + head_len


def decode_frame(buffer: bytes | memoryview) -> tuple[FrameHeader, torch.Tensor, int]:
    """Decode the frame at the start of `buffer`: its header, a 1-D tensor of the chunk, and the
    number of bytes consumed. The payload is checked against its size and checksum first."""
    view = memoryview(buffer)
    header, start = parse_header(view)
    end = start + header.nbytes
    if len(view) < end:
        raise FrameError(
            f"{header.name}: truncated frame: header claims {header.nbytes} payload bytes, "
            f"{len(view) - start} present"
        )
    payload = view[start:end]
    if hashlib.sha256(payload).hexdigest() != header.sha256:
        raise FrameError(f"{header.name}: payload checksum mismatch (corrupted chunk)")
    dtype = header.torch_dtype
    carrier = torch.int16 if dtype == torch.bfloat16 else dtype
    np_dtype = torch.empty((), dtype=carrier).numpy().dtype.newbyteorder("<")
    array = np.frombuffer(payload, dtype=np_dtype).astype(np_dtype.newbyteorder("="))
    tensor = torch.from_numpy(array)
    if dtype == torch.bfloat16:
        tensor = tensor.view(torch.bfloat16)
    return header, tensor, end


def decode(buffer: bytes | memoryview) -> tuple[str, torch.Tensor]:
    """Decode one frame that holds a whole tensor; return its name and the tensor."""
    header, chunk, used = decode_frame(buffer)
    if used != len(buffer):
        raise FrameError(f"{header.name}: {len(buffer) - used} unexpected bytes after the frame")
    if header.offset != 0 or header.count != header.total:
        raise FrameError(f"{header.name}: frame holds a chunk, not the whole tensor")
    return header.name, chunk.reshape(header.shape)


def encode_many(tensors: dict[str, torch.Tensor]) -> bytes:
    """Frames for several named tensors, concatenated (for files and small messages)."""
    return b"".join(encode(t, n) for n, t in tensors.items())


def decode_many(buffer: bytes | memoryview, max_tensors: int = 4096) -> dict[str, torch.Tensor]:
    """Decode concatenated whole-tensor frames."""
    view = memoryview(buffer)
    out: dict[str, torch.Tensor] = {}
    pos = 0
    while pos < len(view):
        if len(out) >= max_tensors:
            raise FrameError(f"more than {max_tensors} tensors in one buffer")
        header, chunk, used = decode_frame(view[pos:])
        if header.offset != 0 or header.count != header.total:
            raise FrameError(f"{header.name}: frame holds a chunk, not the whole tensor")
        if header.name in out:
            raise FrameError(f"{header.name}: tensor appears twice")
        out[header.name] = chunk.reshape(header.shape)
        pos += used
    return out
