"""The coordinator service's gRPC plumbing, with tensor frames kept out of protobuf's copies.

Model downloads and update uploads are almost all frame bytes. Built as protobuf messages, each
frame would be copied into the message, again when serialized, and twice more when parsed and
read back. Here a frame message is written straight from the frame's parts (one copy), and read
as a view of the received bytes (none). The bytes on the wire are exactly the protobuf encoding
of `TensorChunk` / `UploadChunk`, so any client or server built from the `.proto` interoperates;
messages of any other shape fall back to the generated parser. Works with grpcio 1.51 as well as
current versions (the RISC-V client's stack).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from fedcore.proto import coordinator_pb2 as pb
from fedcore.proto import coordinator_pb2_grpc as pb_grpc
from fedcore.serialization import FrameError, FrameParts

SERVICE = pb.DESCRIPTOR.services_by_name["Coordinator"]
#: Field numbers of the frame bytes in TensorChunk and in UploadChunk's oneof.
DOWNLOAD_FRAME_FIELD = pb.TensorChunk.DESCRIPTOR.fields_by_name["frame"].number
UPLOAD_FRAME_FIELD = pb.UploadChunk.DESCRIPTOR.fields_by_name["frame"].number
_LENGTH_DELIMITED = 2
MessageType = TypeVar("MessageType", bound=Message)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: memoryview, position: int) -> tuple[int, int]:
    """The varint at `position` and the position after it; (-1, position) if malformed."""
    value = shift = 0
    while position < len(data) and shift < 64:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
    return -1, position


def frame_message(field: int, parts: FrameParts) -> bytes:
    """The protobuf encoding of a message whose only field, bytes field `field`, holds the
    frame `parts`."""
    length = sum(len(part) for part in parts)
    return b"".join((_varint(field << 3 | _LENGTH_DELIMITED), _varint(length), *parts))


def sole_bytes_field(data: bytes, field: int) -> memoryview | None:
    """A view of bytes field `field` when `data` encodes a message holding only that field,
    else None."""
    view = memoryview(data)
    key, position = _read_varint(view, 0)
    if key != field << 3 | _LENGTH_DELIMITED:
        return None
    length, position = _read_varint(view, position)
    if length < 0 or position + length != len(view):
        return None
    return view[position:]


def _parse(message: type[MessageType], data: bytes) -> MessageType:
    """`data` parsed as `message`; FrameError (a malformed transfer) if it is not one."""
    try:
        return message.FromString(data)
    except DecodeError as error:
        raise FrameError(f"message is not a {message.__name__}: {error}") from None


def download_frame(data: bytes) -> memoryview:
    """A received TensorChunk's frame."""
    frame = sole_bytes_field(data, DOWNLOAD_FRAME_FIELD)
    return frame if frame is not None else memoryview(_parse(pb.TensorChunk, data).frame)


def upload_part(data: bytes) -> pb.UploadHeader | memoryview:
    """A received UploadChunk: its header message, or a view of its frame."""
    frame = sole_bytes_field(data, UPLOAD_FRAME_FIELD)
    if frame is not None:
        return frame
    chunk = _parse(pb.UploadChunk, data)
    return chunk.header if chunk.HasField("header") else memoryview(chunk.frame)


def _serialize(message: Message | bytes) -> bytes:
    """Messages built by `frame_message` go out as they are; others are serialized."""
    return message if isinstance(message, bytes) else message.SerializeToString()


def _path(method: str) -> str:
    return f"/{SERVICE.full_name}/{method}"


def coordinator_stub(channel: grpc.Channel) -> pb_grpc.CoordinatorStub:
    """The generated client stub, with DownloadModel and UploadUpdate moving frames as views and
    pre-built messages."""
    stub = pb_grpc.CoordinatorStub(channel)
    stub.DownloadModel = channel.unary_stream(
        _path("DownloadModel"),
        request_serializer=pb.DownloadRequest.SerializeToString,
        response_deserializer=download_frame,
    )
    stub.UploadUpdate = channel.stream_unary(
        _path("UploadUpdate"),
        request_serializer=_serialize,
        response_deserializer=pb.UploadReply.FromString,
    )
    return stub


_HANDLERS: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def add_coordinator(servicer: pb_grpc.CoordinatorServicer, server: Any) -> None:
    """Register `servicer` for every method of the service descriptor: generated codecs,
    except that UploadUpdate's frames arrive as views and DownloadModel sends pre-built
    messages."""
    handlers = {}
    for method in SERVICE.methods:
        request: Callable[[bytes], Any] = getattr(pb, method.input_type.name).FromString
        response: Callable[[Any], bytes] = _serialize
        if method.name == "UploadUpdate":
            request = upload_part
        handlers[method.name] = _HANDLERS[method.client_streaming, method.server_streaming](
            getattr(servicer, method.name),
            request_deserializer=request,
            response_serializer=response,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),)
    )
