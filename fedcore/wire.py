"""Flat vectors over the wire: chunked tensor frames out, strict reassembly in.

Reassembly allocates from the *expected* layout, never from what a header claims, and accepts
each tensor's chunks only in order, so a lying, truncated, duplicated or corrupted stream is
refused with a reason before anything is allocated for it or reaches the model. Vectors of at
least `spool_bytes` are spooled to an unlinked file in `spool_dir` with plain writes (page cache,
not the process's memory) and mapped read-only when complete, so several large uploads arriving
at once do not each hold their size in RAM.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedcore.serialization import (
    DEFAULT_CHUNK_BYTES,
    DTYPE_NAMES,
    FrameError,
    FrameParts,
    decode_frame,
    encode_chunks,
)

#: What a named vector must be: its length and its dtype, or the dtypes it may have.
Expected = tuple[int, torch.dtype | tuple[torch.dtype, ...]]


def vector_frames(
    vectors: Mapping[str, torch.Tensor], chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[FrameParts]:
    """Wire frames of at most `chunk_bytes` payload covering each named 1-D vector in order."""
    for name, vector in vectors.items():
        yield from encode_chunks(vector, name, chunk_bytes)


class _Spool:
    """One vector being written to a file by offset, then mapped as a tensor."""

    def __init__(self, directory: Path, size: int, dtype: torch.dtype) -> None:
        self.size, self.dtype = size, dtype
        self.itemsize = torch.empty((), dtype=dtype).element_size()
        descriptor, name = tempfile.mkstemp(prefix="upload-", suffix=".spool", dir=directory)
        self.descriptor, self.path = descriptor, Path(name)
        os.ftruncate(descriptor, size * self.itemsize)

    def write(self, offset: int, chunk: np.ndarray[Any, Any]) -> None:
        """Write `chunk` at element `offset`, in native byte order."""
        native = chunk.astype(chunk.dtype.newbyteorder("="), copy=False)
        os.pwrite(self.descriptor, native.view(np.uint8).data, offset * self.itemsize)

    def tensor(self) -> torch.Tensor:
        """The complete vector, file-backed; the file is unlinked (freed when unmapped)."""
        try:
            return torch.from_file(str(self.path), shared=True, size=self.size, dtype=self.dtype)
        finally:
            self.discard()

    def discard(self) -> None:
        """Close and remove the file (idempotent)."""
        if self.descriptor >= 0:
            os.close(self.descriptor)
            self.descriptor = -1
            self.path.unlink(missing_ok=True)


def spooled(vector: torch.Tensor, directory: Path, min_bytes: int) -> torch.Tensor:
    """`vector` moved to an unlinked, mapped file in `directory` (made when first needed; page
    cache, not the process's memory) when it holds at least `min_bytes`; else `vector` itself."""
    vector = vector.contiguous()
    if vector.numel() * vector.element_size() < min_bytes:
        return vector
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    spool = _Spool(directory, vector.numel(), vector.dtype)
    spool.write(0, vector.view(torch.uint8).numpy())
    return spool.tensor()


class VectorAssembler:
    """Collects the frames of named 1-D vectors of known sizes and dtypes."""

    def __init__(
        self,
        expected: Mapping[str, Expected],
        spool_dir: Path | None = None,
        spool_bytes: int = 0,
        into: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        """`into` gives tensors to fill instead of allocating (a client reuses its last model's
        memory for the next download)."""
        self.expected = dict(expected)
        self.spool_dir = spool_dir
        self.spool_bytes = spool_bytes
        self._vectors = {
            name: tensor
            for name, tensor in (into or {}).items()
            if name in self.expected and (tensor.numel(), tensor.dtype) == self.expected[name]
        }
        self._dtypes: dict[str, torch.dtype] = {}
        self._spools: dict[str, _Spool] = {}
        self._filled: dict[str, int] = {}

    def add(self, frame: bytes | memoryview) -> None:
        """Check one frame against the expected layout and copy its chunk into place (a wire
        frame: TLS authenticated its bytes, so it needs no checksum; one it carries is checked)."""
        header, chunk, used = decode_frame(frame, require_checksum=False)
        if used != len(frame):
            raise FrameError(f"{header.name}: {len(frame) - used} unexpected bytes after the frame")
        if header.name not in self.expected:
            raise FrameError(f"unexpected tensor {header.name!r}; expected {sorted(self.expected)}")
        size, allowed = self.expected[header.name]
        if header.shape != (size,):
            raise FrameError(f"{header.name}: shape {header.shape}, expected ({size},)")
        choices = allowed if isinstance(allowed, tuple) else (allowed,)
        dtype = self._dtypes.setdefault(header.name, header.torch_dtype)
        if header.torch_dtype not in choices or header.torch_dtype != dtype:
            names = " or ".join(DTYPE_NAMES[d] for d in choices)
            raise FrameError(f"{header.name}: dtype {header.dtype}, expected {names}")
        filled = self._filled.get(header.name, 0)
        if header.offset != filled:
            raise FrameError(
                f"{header.name}: chunk at element {header.offset}, expected {filled} (out of order, "
                "duplicated or missing chunk)"
            )
        name = header.name
        if name not in self._vectors and name not in self._spools:
            nbytes = size * torch.empty((), dtype=dtype).element_size()
            if self.spool_dir is not None and self.spool_bytes and nbytes >= self.spool_bytes:
                self._spools[name] = _Spool(self.spool_dir, size, dtype)
            else:
                self._vectors[name] = torch.empty(size, dtype=dtype)
        if name in self._spools:
            self._spools[name].write(filled, chunk)
        else:
            target = self._vectors[name]
            carrier = target.view(torch.int16) if dtype == torch.bfloat16 else target
            carrier.numpy()[filled : filled + header.count] = chunk
        self._filled[name] = filled + header.count

    def result(self) -> dict[str, torch.Tensor]:
        """The complete vectors; an error naming any that is missing or incomplete."""
        for name, (size, _) in self.expected.items():
            have = self._filled.get(name, 0)
            if have != size:
                self.discard()
                raise FrameError(
                    f"{name}: received {have} of {size} elements (missing tensor or chunks)"
                )
        for name in list(self._spools):
            self._vectors[name] = self._spools.pop(name).tensor()
        return self._vectors

    def discard(self) -> None:
        """Drop spool files of an upload that will not complete."""
        for spool in self._spools.values():
            spool.discard()
        self._spools.clear()
