"""Frame messages built and read without protobuf copies are exactly the .proto's messages."""

from __future__ import annotations

import pytest
import torch

from fedcore.proto import coordinator_pb2 as pb
from fedcore.rpc import (
    DOWNLOAD_FRAME_FIELD,
    UPLOAD_FRAME_FIELD,
    download_frame,
    frame_message,
    sole_bytes_field,
    upload_part,
)
from fedcore.serialization import FrameError, frame_parts


@pytest.mark.parametrize("numel", [0, 1, 40, 5000])
def test_built_messages_are_the_protobuf_encoding(numel: int) -> None:
    parts = frame_parts(torch.arange(float(numel)), "params", 0)
    frame = b"".join(parts)
    download = frame_message(DOWNLOAD_FRAME_FIELD, parts)
    upload = frame_message(UPLOAD_FRAME_FIELD, parts)
    assert download == pb.TensorChunk(frame=frame).SerializeToString()
    assert upload == pb.UploadChunk(frame=frame).SerializeToString()
    assert bytes(download_frame(download)) == frame
    part = upload_part(upload)
    assert isinstance(part, memoryview) and bytes(part) == frame


def test_other_message_shapes_fall_back_to_the_generated_parser() -> None:
    header = pb.UploadHeader(client_id="client-0", task_id="t", base_version=3)
    parsed = upload_part(pb.UploadChunk(header=header).SerializeToString())
    assert isinstance(parsed, pb.UploadHeader) and parsed == header
    with_unknown_field = pb.TensorChunk(frame=b"abc").SerializeToString() + b"\x10\x01"
    assert sole_bytes_field(with_unknown_field, DOWNLOAD_FRAME_FIELD) is None
    assert bytes(download_frame(with_unknown_field)) == b"abc"
    assert sole_bytes_field(b"", DOWNLOAD_FRAME_FIELD) is None
    assert bytes(download_frame(b"")) == b""


def test_a_length_that_disagrees_with_the_message_is_not_taken_as_a_frame() -> None:
    message = frame_message(UPLOAD_FRAME_FIELD, frame_parts(torch.ones(10), "delta"))
    assert sole_bytes_field(message[:-1], UPLOAD_FRAME_FIELD) is None
    assert sole_bytes_field(message + b"\x00", UPLOAD_FRAME_FIELD) is None
    with pytest.raises(FrameError, match="not a UploadChunk"):
        upload_part(message[:-1])
    with pytest.raises(FrameError, match="not a TensorChunk"):
        download_frame(b"\xff" * 11)
