"""Tensor frames: a pickle-free, self-checking binary format for tensors on the wire and on disk.

A frame is `MAGIC | u32 header length | JSON header | raw little-endian bytes`. The header names
the tensor, its dtype and full shape, the element offset and count of this chunk, and, in frames
written to disk, the sha256 of the bytes, so a large tensor travels as many small frames.
Decoding checks every claim against the bytes actually present *before* allocating anything.

Frames on the wire carry no checksum: every connection is mutual TLS, whose record MACs already
authenticate each byte in transit, and a chunk digest adds nothing against a client that holds a
valid certificate (it would hash its own bad bytes). Files have no such guard, so their frames
carry one and it is required (`decode_frame(..., require_checksum=True)`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedcore.bounded import json_loads

MAGIC = b"FCT1"
_LENGTH = struct.Struct("<I")
MAX_HEADER_BYTES = 16 * 1024
MAX_NAME_CHARS = 512
MAX_DIMS = 16
#: A frame header is an object holding a list of sizes: nothing deeper.
MAX_HEADER_DEPTH = 2
#: Payload bytes per frame when a tensor is cut into chunks: a gRPC message stays well under its
#: 4 MiB default, and a model is hashed in these pieces (see `chunk_digests`).
DEFAULT_CHUNK_BYTES = 2 << 20

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
    #: None in a wire frame (see the module docstring).
    sha256: str | None

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


def _wire_dtype(dtype: torch.dtype) -> np.dtype[Any]:
    """The little-endian numpy dtype that carries `dtype`'s bytes (bfloat16 as int16)."""
    carrier = torch.int16 if dtype == torch.bfloat16 else dtype
    return torch.empty((), dtype=carrier).numpy().dtype.newbyteorder("<")


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """A tensor's little-endian bytes: a view of its memory when it is a contiguous CPU tensor
    on a little-endian host (no copy), else a converted copy."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if flat.dtype == torch.bfloat16:
        flat = flat.view(torch.int16)
    array = flat.numpy()
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return little.view(np.uint8).data


#: A frame as (preamble with its header, payload view): written or sent without first copying
#: the payload into one bytes object.
FrameParts = tuple[bytes, memoryview]


def frame_parts(
    tensor: torch.Tensor,
    name: str = "",
    offset: int = 0,
    shape: tuple[int, ...] | None = None,
    checksum: bool = True,
) -> FrameParts:
    """The parts of a frame holding `tensor` (or a chunk of a larger tensor of `shape` at
    `offset`), with the payload's sha256 unless `checksum` is off (a wire frame)."""
    if tensor.dtype not in DTYPE_NAMES:
        raise FrameError(f"{name or 'tensor'}: dtype {tensor.dtype} is not supported on the wire")
    payload = tensor_bytes(tensor)
    header: dict[str, Any] = {
        "name": name,
        "dtype": DTYPE_NAMES[tensor.dtype],
        "shape": list(shape if shape is not None else tensor.shape),
        "offset": offset,
        "count": tensor.numel(),
    }
    if checksum:
        header["sha256"] = hashlib.sha256(payload).hexdigest()
    head = json.dumps(header, separators=(",", ":")).encode()
    return MAGIC + _LENGTH.pack(len(head)) + head, payload


def encode(
    tensor: torch.Tensor, name: str = "", offset: int = 0, shape: tuple[int, ...] | None = None
) -> bytes:
    """One frame holding `tensor` (or a chunk of a larger tensor of `shape` at `offset`)."""
    return b"".join(frame_parts(tensor, name, offset, shape))


def _chunks(tensor: torch.Tensor, chunk_bytes: int) -> Iterator[tuple[int, torch.Tensor]]:
    """(element offset, chunk) of a tensor cut into pieces of at most `chunk_bytes`."""
    flat = tensor.detach().reshape(-1)
    step = max(1, chunk_bytes // max(1, flat.element_size()))
    for start in range(0, flat.numel(), step):
        yield start, flat[start : start + step]


def _sha256(chunk: torch.Tensor) -> str:
    return hashlib.sha256(tensor_bytes(chunk)).hexdigest()


def chunk_digests(tensor: torch.Tensor, chunk_bytes: int, digests: dict[int, str]) -> list[str]:
    """The sha256 of each `chunk_bytes` chunk of `tensor`, in order. `digests` maps chunk offsets
    to digests already known: read where present, filled where not, so a tensor that is never
    modified (a published model) is hashed once however often it is asked for. Missing chunks
    are hashed on all cores (hashlib releases the GIL)."""
    missing = [
        (start, chunk) for start, chunk in _chunks(tensor, chunk_bytes) if start not in digests
    ]
    if len(missing) > 1:
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            hashed = pool.map(_sha256, (chunk for _, chunk in missing))
            digests.update(zip((start for start, _ in missing), hashed, strict=True))
    else:
        digests.update((start, _sha256(chunk)) for start, chunk in missing)
    return [digests[start] for start, _ in _chunks(tensor, chunk_bytes)]


def encode_chunks(tensor: torch.Tensor, name: str, chunk_bytes: int) -> Iterator[FrameParts]:
    """Wire frames (no checksum) of at most `chunk_bytes` payload each, covering a tensor in
    order."""
    shape = tuple(tensor.shape)
    if tensor.numel() == 0:
        yield frame_parts(tensor.reshape(-1), name, 0, shape, checksum=False)
    for start, chunk in _chunks(tensor, chunk_bytes):
        yield frame_parts(chunk, name, start, shape, checksum=False)


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
        raw = json_loads(bytes(view[start : start + head_len]), MAX_HEADER_DEPTH)
    except ValueError as exc:
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
    if sha is not None and (not isinstance(sha, str) or len(sha) != 64):
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


def decode_frame(
    buffer: bytes | memoryview, require_checksum: bool = True
) -> tuple[FrameHeader, np.ndarray[Any, Any], int]:
    """Decode the frame at the start of `buffer`: its header, the chunk as a read-only
    little-endian array viewing `buffer` (no copy), and the number of bytes consumed. The
    payload is checked against its size and its checksum first; a frame without one is
    refused unless `require_checksum` is off (a wire frame)."""
    view = memoryview(buffer)
    header, start = parse_header(view)
    end = start + header.nbytes
    if len(view) < end:
        raise FrameError(
            f"{header.name}: truncated frame: header claims {header.nbytes} payload bytes, "
            f"{len(view) - start} present"
        )
    payload = view[start:end]
    if header.sha256 is None:
        if require_checksum:
            raise FrameError(f"{header.name}: frame carries no checksum (sha256)")
    elif hashlib.sha256(payload).hexdigest() != header.sha256:
        raise FrameError(f"{header.name}: payload checksum mismatch (corrupted chunk)")
    return header, np.frombuffer(payload, dtype=_wire_dtype(header.torch_dtype)), end


def chunk_tensor(header: FrameHeader, chunk: np.ndarray[Any, Any]) -> torch.Tensor:
    """A decoded chunk as a tensor of its own memory, in native byte order."""
    tensor = torch.from_numpy(chunk.astype(chunk.dtype.newbyteorder("=")))
    return tensor.view(torch.bfloat16) if header.torch_dtype == torch.bfloat16 else tensor


def decode(buffer: bytes | memoryview) -> tuple[str, torch.Tensor]:
    """Decode one frame that holds a whole tensor; return its name and the tensor."""
    header, chunk, used = decode_frame(buffer)
    if used != len(buffer):
        raise FrameError(f"{header.name}: {len(buffer) - used} unexpected bytes after the frame")
    if header.offset != 0 or header.count != header.total:
        raise FrameError(f"{header.name}: frame holds a chunk, not the whole tensor")
    return header.name, chunk_tensor(header, chunk).reshape(header.shape)


def frames_of(tensors: Mapping[str, torch.Tensor]) -> Iterator[bytes | memoryview]:
    """The pieces of whole-tensor frames for several named tensors, in order (for files)."""
    for name, tensor in tensors.items():
        yield from frame_parts(tensor, name)


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
        out[header.name] = chunk_tensor(header, chunk).reshape(header.shape)
        pos += used
    return out
