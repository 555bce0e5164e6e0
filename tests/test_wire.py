"""Chunked vectors over the wire: strict reassembly in memory and spooled to disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedcore.serialization import FrameError
from fedcore.wire import VectorAssembler, vector_frames

EXPECTED = {"delta": (10_000, torch.float32), "buffers": (7, torch.float64)}


def _vectors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return {
        "delta": torch.randn(10_000, generator=generator),
        "buffers": torch.randn(7, generator=generator, dtype=torch.float64),
    }


@pytest.mark.parametrize("spool_bytes", [0, 4096])
def test_reassembly_is_exact_in_memory_and_spooled(tmp_path: Path, spool_bytes: int) -> None:
    vectors = _vectors()
    assembler = VectorAssembler(EXPECTED, tmp_path, spool_bytes)
    for frame in map(b"".join, vector_frames(vectors, chunk_bytes=4096)):
        assembler.add(frame)
    if spool_bytes:
        assert len(list(tmp_path.iterdir())) == 1, "the 40 kB delta is spooled, the buffers not"
    result = assembler.result()
    assert list(tmp_path.iterdir()) == [], "spool files are unlinked once mapped"
    for name, vector in vectors.items():
        assert torch.equal(result[name], vector)


def test_an_incomplete_spooled_upload_is_refused_and_leaves_no_file(tmp_path: Path) -> None:
    assembler = VectorAssembler(EXPECTED, tmp_path, 4096)
    frames = list(map(b"".join, vector_frames(_vectors(), chunk_bytes=4096)))
    for frame in frames[:3]:
        assembler.add(frame)
    with pytest.raises(FrameError, match=r"delta: received 3072 of 10000 elements"):
        assembler.result()
    assert list(tmp_path.iterdir()) == []
    out_of_order = VectorAssembler(EXPECTED, tmp_path, 4096)
    out_of_order.add(frames[0])
    with pytest.raises(FrameError, match="out of order"):
        out_of_order.add(frames[2])
    out_of_order.discard()
    assert list(tmp_path.iterdir()) == []
