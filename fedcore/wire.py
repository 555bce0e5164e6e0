"""Flat vectors over the wire: chunked tensor frames out, strict reassembly in.

Reassembly allocates from the *expected* layout, never from what a header claims, and accepts
each tensor's chunks only in order, so a lying, truncated, duplicated or corrupted stream is
refused with a reason before anything is allocated for it or reaches the model.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from fedcore.serialization import DTYPE_NAMES, FrameError, decode_frame, encode_chunks

DEFAULT_CHUNK_BYTES = 1 << 20


def vector_frames(
    vectors: Mapping[str, torch.Tensor], chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[bytes]:
    """Frames of at most `chunk_bytes` payload covering each named 1-D vector in order."""
    for name, vector in vectors.items():
        yield from encode_chunks(vector, name, chunk_bytes)


class VectorAssembler:
    """Collects the frames of named 1-D vectors of known sizes and dtypes."""

    def __init__(self, expected: Mapping[str, tuple[int, torch.dtype]]) -> None:
        self.expected = dict(expected)
        self._vectors: dict[str, torch.Tensor] = {}
        self._filled: dict[str, int] = {}

    def add(self, frame: bytes) -> None:
        """Check one frame against the expected layout and copy its chunk into place."""
        header, chunk, used = decode_frame(frame)
        if used != len(frame):
            raise FrameError(f"{header.name}: {len(frame) - used} unexpected bytes after the frame")
        if header.name not in self.expected:
            raise FrameError(f"unexpected tensor {header.name!r}; expected {sorted(self.expected)}")
        size, dtype = self.expected[header.name]
        if header.shape != (size,):
            raise FrameError(f"{header.name}: shape {header.shape}, expected ({size},)")
        if header.torch_dtype != dtype:
            raise FrameError(f"{header.name}: dtype {header.dtype}, expected {DTYPE_NAMES[dtype]}")
        filled = self._filled.get(header.name, 0)
        if header.offset != filled:
            raise FrameError(
                f"{header.name}: chunk at element {header.offset}, expected {filled} (out of order, "
                "duplicated or missing chunk)"
            )
        if header.name not in self._vectors:
            self._vectors[header.name] = torch.empty(size, dtype=dtype)
        self._vectors[header.name][filled : filled + header.count] = chunk
        self._filled[header.name] = filled + header.count

    def result(self) -> dict[str, torch.Tensor]:
        """The complete vectors; an error naming any that is missing or incomplete."""
        for name, (size, _) in self.expected.items():
            have = self._filled.get(name, 0)
            if have != size:
                raise FrameError(
                    f"{name}: received {have} of {size} elements (missing tensor or chunks)"
                )
        return self._vectors
