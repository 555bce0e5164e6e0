"""Tensor frames: round trips for every dtype, and every rejection the wire format promises."""

import json
import resource
import struct

import pytest
import torch

from fedcore.serialization import (
    DTYPES,
    MAGIC,
    FrameError,
    chunk_tensor,
    decode,
    decode_frame,
    decode_many,
    encode,
    encode_chunks,
)


@pytest.mark.parametrize("dtype", list(DTYPES.values()))
def test_round_trip_every_dtype(dtype):
    source = (torch.randn(3, 5) * 10).to(dtype)
    name, back = decode(encode(source, "w"))
    assert name == "w"
    assert back.dtype == dtype and back.shape == (3, 5)
    assert torch.equal(back, source)


def test_frames_are_little_endian_raw_bytes():
    frame = encode(torch.tensor([1.0], dtype=torch.float32))
    assert frame.endswith(struct.pack("<f", 1.0))


def test_chunks_reassemble_in_order():
    tensor = torch.randn(1000)
    frames = list(map(b"".join, encode_chunks(tensor, "big", chunk_bytes=1024)))
    assert len(frames) == 4
    out = torch.empty(1000)
    for frame in frames:
        header, chunk, _ = decode_frame(frame, require_checksum=False)
        assert header.shape == (1000,) and header.sha256 is None
        out[header.offset : header.offset + header.count] = chunk_tensor(header, chunk)
    assert torch.equal(out, tensor)


def test_wire_frames_carry_no_checksum_and_files_require_one():
    """TLS authenticates wire frames, so they are not hashed; a frame read from a file must
    carry its sha256, and one that carries it is checked wherever it is read."""
    wire = b"".join(next(encode_chunks(torch.randn(10), "x", 1024)))
    with pytest.raises(FrameError, match="carries no checksum"):
        decode(wire)
    flipped = bytearray(encode(torch.randn(10), "x"))
    flipped[-1] ^= 0x01
    with pytest.raises(FrameError, match="checksum mismatch"):
        decode_frame(bytes(flipped), require_checksum=False)


def _forge(header: dict, payload: bytes) -> bytes:
    head = json.dumps(header).encode()
    return MAGIC + struct.pack("<I", len(head)) + head + payload


def _header(**changes):
    base = {
        "name": "x",
        "dtype": "float32",
        "shape": [4],
        "offset": 0,
        "count": 4,
        "sha256": "0" * 64,
    }
    return {**base, **changes}


def test_rejects_truncated_frames():
    frame = encode(torch.randn(16), "x")
    for cut in (2, 7, 20, len(frame) - 1):
        with pytest.raises(FrameError, match="truncated"):
            decode(frame[:cut])


def test_rejects_bit_flips():
    frame = bytearray(encode(torch.randn(16), "x"))
    frame[-3] ^= 0x10
    with pytest.raises(FrameError, match="checksum"):
        decode(bytes(frame))


def test_rejects_unknown_dtype_and_bad_magic():
    with pytest.raises(FrameError, match="unknown dtype 'complex128'"):
        decode(_forge(_header(dtype="complex128"), b"\0" * 16))
    with pytest.raises(FrameError, match="magic"):
        decode(b"PKL0" + encode(torch.zeros(1))[4:])


def test_header_claiming_100_gb_is_refused_without_allocating():
    claimed = 25_000_000_000  # 25 G float32 elements = 100 GB
    forged = _forge(_header(shape=[claimed], count=claimed), b"\0" * 64)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(
        FrameError, match="truncated frame: header claims 100000000000 payload bytes"
    ):
        decode(forged)
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 100_000


def test_rejects_headers_that_lie_about_sizes():
    with pytest.raises(FrameError, match="outside a tensor of 4 elements"):
        decode(_forge(_header(offset=2, count=4), b"\0" * 16))
    with pytest.raises(FrameError, match="non-negative integer"):
        decode(_forge(_header(count=-1), b""))
    with pytest.raises(FrameError, match="header claims"):
        decode(struct.pack("<4sI", MAGIC, 1 << 30))
    with pytest.raises(FrameError, match="not valid JSON"):
        decode(MAGIC + struct.pack("<I", 3) + b"{{{")
    with pytest.raises(FrameError, match="chunk, not the whole tensor"):
        decode(encode(torch.randn(10), "x", 0, (100,)))


def test_many_rejects_duplicates_and_trailing_garbage():
    a, b = torch.randn(3), torch.randn(2, 2)
    both = decode_many(encode(a, "a") + encode(b, "b"))
    assert torch.equal(both["a"], a) and torch.equal(both["b"], b)
    with pytest.raises(FrameError, match="appears twice"):
        decode_many(encode(a, "a") + encode(a, "a"))
    with pytest.raises(FrameError, match="unexpected bytes"):
        decode(encode(a, "a") + b"junk")
