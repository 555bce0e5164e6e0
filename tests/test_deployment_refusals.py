"""A live `fedcore server` refuses what it must, over real mutual TLS, and keeps serving."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch

from fedcore.certs import certs_main
from fedcore.proto import coordinator_pb2 as pb
from fedcore.proto import coordinator_pb2_grpc as pb_grpc
from fedcore.serialization import chunk_tensor, decode_frame, encode
from fedcore.server.ledger import read_ledger
from fedcore.wire import vector_frames
from tests.processes import server_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A server that keeps dispatching one-client rounds; yields (port, root)."""
    root = tmp_path_factory.mktemp("refusals")
    certs = root / "certs"
    assert (
        certs_main(["init", "--dir", str(certs), "--server-name", "localhost", "--clients", "4"])
        == 0
    )
    assert certs_main(["add-client", "--dir", str(certs), "--client", "intruder"]) == 0
    enrolled = certs / "server" / "enrolled.txt"
    enrolled.write_text("".join(f"client-{i}\n" for i in range(4)))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedcore.cli",
            "server",
            "dataset=synthetic",
            "model=logreg",
            "num_clients=4",
            "clients_per_round=1",
            "rounds=1000",
            "validation.max_delta_norm=1000",
            "output.progress=off",
            "evaluation.every=1000",
            "deployment.address=127.0.0.1:0",
            f"deployment.certs={certs / 'server'}",
            f"hydra.run.dir={root / 'run'}",
        ],
        cwd=root,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        yield server_port(process), root
    finally:
        process.terminate()
        process.wait(timeout=30)


def _channel(port: int, certs: Path, client: str | None) -> grpc.Channel:
    key = (certs / "clients" / f"{client}.key").read_bytes() if client else None
    chain = (certs / "clients" / f"{client}.pem").read_bytes() if client else None
    credentials = grpc.ssl_channel_credentials((certs / "ca.pem").read_bytes(), key, chain)
    return grpc.secure_channel(
        f"127.0.0.1:{port}", credentials, options=[("grpc.ssl_target_name_override", "localhost")]
    )


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value.code()


def test_every_rpc_without_credentials_is_refused(server):
    port, root = server
    methods = pb.DESCRIPTOR.services_by_name["Coordinator"].methods
    assert len(methods) == 6
    for channel in (
        grpc.insecure_channel(f"127.0.0.1:{port}"),
        _channel(port, root / "certs", None),
    ):
        for method in methods:
            path = f"/fedcore.v1.Coordinator/{method.name}"
            if method.client_streaming:
                call = channel.stream_unary(path)
                assert (
                    _code(lambda c=call: c(iter([b""]), timeout=5)) == grpc.StatusCode.UNAVAILABLE
                )
            elif method.server_streaming:
                call = channel.unary_stream(path)
                assert _code(lambda c=call: list(c(b"", timeout=5))) == grpc.StatusCode.UNAVAILABLE
            else:
                call = channel.unary_unary(path)
                assert _code(lambda c=call: c(b"", timeout=5)) == grpc.StatusCode.UNAVAILABLE
        channel.close()


def test_unenrolled_and_impersonating_clients_are_refused(server):
    port, root = server
    intruder = pb_grpc.CoordinatorStub(_channel(port, root / "certs", "intruder"))
    with pytest.raises(grpc.RpcError) as error:
        intruder.Join(pb.JoinRequest(client_id="intruder"), timeout=10)
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "not enrolled" in error.value.details()
    impostor = pb_grpc.CoordinatorStub(_channel(port, root / "certs", "client-1"))
    with pytest.raises(grpc.RpcError) as error:
        impostor.Join(pb.JoinRequest(client_id="client-0"), timeout=10)
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "certificate belongs to 'client-1'" in error.value.details()
    refused = [
        (e["client"], e["reason"])
        for e in read_ledger(root / "run" / "ledger.jsonl")
        if e["event"] == "refused"
    ]
    assert refused[-2:] == [
        ("intruder", "client 'intruder' is not enrolled"),
        ("client-0", "certificate belongs to 'client-1', request claims 'client-0'"),
    ]


def decode_stream(data: bytes) -> list[tuple[str, torch.Tensor]]:
    """The (name, chunk) of each tensor frame in a concatenated download."""
    chunks, offset = [], 0
    while offset < len(data):
        header, chunk, used = decode_frame(data[offset:], require_checksum=False)
        chunks.append((header.name, chunk_tensor(header, chunk)))
        offset += used
    return chunks


def _next_task(stub, session: str) -> pb.TaskReply:
    for _ in range(20):
        reply = stub.GetTask(
            pb.TaskRequest(client_id="client-2", session=session, wait_seconds=2), timeout=10
        )
        if reply.status == pb.TaskReply.TASK:
            return reply
    raise AssertionError("no task dispatched")


def _upload(
    stub, session, task, size: int, frames: list[bytes], examples: int = 10, version_lag: int = 0
) -> pb.UploadReply:
    header = pb.UploadHeader(
        client_id="client-2",
        session=session,
        task_id=task.task_id,
        base_version=task.version - version_lag,
        num_examples=examples,
        payload="dense",
        count=size,
    )
    parts = [pb.UploadChunk(header=header), *(pb.UploadChunk(frame=f) for f in frames)]
    return stub.UploadUpdate(iter(parts), timeout=30)


class _Unpickling:
    """Unpickled, it creates the file at `path` (proof that it ran)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.path, "w"))


def test_bad_updates_are_rejected_with_reasons_and_replays_refused(server):
    port, root = server
    stub = pb_grpc.CoordinatorStub(_channel(port, root / "certs", "client-2"))
    joined = stub.Join(pb.JoinRequest(client_id="client-2"), timeout=10)
    spec = json.loads(joined.model_spec_json)
    size = sum(torch.Size(shape).numel() for _, shape in spec["params"]["tensors"])
    good = {"delta": torch.zeros(size), "buffers": torch.zeros(0)}

    def frames(**vectors) -> list[bytes]:
        return list(map(b"".join, vector_frames({**good, **vectors}, chunk_bytes=256)))

    marker = root / "unpickled"
    pickled = pickle.dumps(_Unpickling(str(marker)))
    flipped = bytearray(encode(torch.zeros(64), "delta", 0, (size,)))  # a frame with a sha256
    flipped[-2] ^= 0xFF
    nan = torch.zeros(size)
    nan[3] = float("nan")
    cases = [
        (frames(delta=torch.zeros(size + 1)), 10, "shape"),
        (frames(delta=torch.zeros(size, dtype=torch.float64)), 10, "dtype"),
        ([f for i, f in enumerate(frames()) if i != 1], 10, "out of order, duplicated or missing"),
        ([frames()[0], *frames()], 10, "out of order, duplicated or missing"),
        (list(map(b"".join, vector_frames({"buffers": torch.zeros(0)}))), 10, "delta: received 0"),
        (frames(extra=torch.zeros(3)), 10, "unexpected tensor 'extra'"),
        ([bytes(flipped)], 10, "checksum"),
        ([frames()[0][:-5]], 10, "truncated"),
        ([encode(torch.zeros(1), "delta", 0, (25_000_000_000,))], 10, "shape"),
        (frames(delta=nan), 10, "NaN or Inf"),
        (frames(delta=torch.full((size,), float("inf"))), 10, "NaN or Inf"),
        (frames(), 10**9, "claimed example count"),
        (frames(delta=torch.full((size,), 1e4)), 10, "above bound 1000"),
        ([pickled], 10, "not a tensor frame: bad magic bytes"),
    ]
    for bad, examples, reason in cases:
        task = _next_task(stub, joined.session)
        reply = _upload(stub, joined.session, task, size, bad, examples)
        assert not reply.accepted and reason in reply.reason, (reason, reply.reason)
    assert not marker.exists(), "the server must never unpickle what a client sends"

    garbled = _channel(port, root / "certs", "client-2").stream_unary(
        "/fedcore.v1.Coordinator/UploadUpdate",
        request_serializer=lambda message: message,
        response_deserializer=pb.UploadReply.FromString,
    )
    task = _next_task(stub, joined.session)
    header = pb.UploadHeader(
        client_id="client-2",
        session=joined.session,
        task_id=task.task_id,
        base_version=task.version,
        num_examples=10,
        local_steps=1,
        payload="dense",
        count=size,
    )
    reply = garbled(iter([pb.UploadChunk(header=header).SerializeToString(), b"\xff" * 11]))
    assert not reply.accepted and "message is not a UploadChunk" in reply.reason, reply.reason
    cases.append(([], 10, "message is not a UploadChunk"))
    with pytest.raises(grpc.RpcError) as error:
        garbled(iter([b"\xff" * 11]), timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed upload" in error.value.details()

    task = _next_task(stub, joined.session)
    assert _upload(
        stub, joined.session, task, size, frames(delta=torch.full((size,), 0.01))
    ).accepted
    task = _next_task(stub, joined.session)
    assert task.version >= 1
    stale = _upload(stub, joined.session, task, size, frames(), version_lag=1)
    assert not stale.accepted and "based on version" in stale.reason
    cases.append((frames(), 10, "stale"))

    task = _next_task(stub, joined.session)
    request = pb.DownloadRequest(client_id="client-2", session=joined.session, task_id=task.task_id)
    model = b"".join(c.frame for c in stub.DownloadModel(request, timeout=30))
    params = torch.cat([t for name, t in decode_stream(model) if name == "params"])
    assert torch.isfinite(params).all() and params.abs().max() > 0, "the model stays finite"
    assert _upload(stub, joined.session, task, size, frames()).accepted
    with pytest.raises(grpc.RpcError) as error:
        _upload(stub, joined.session, task, size, frames())
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "replayed" in error.value.details()

    entries = read_ledger(root / "run" / "ledger.jsonl")
    rejected = [e["reason"] for e in entries if e["event"] == "rejected"]
    assert len(rejected) == len(cases)
    assert sum(e["event"] == "refused" and "replayed" in e["reason"] for e in entries) == 1
    assert sum(e["event"] == "accepted" for e in entries) == 2
    assert stub.Heartbeat(
        pb.HeartbeatRequest(client_id="client-2", session=joined.session), timeout=10
    ).known, "the server keeps serving"
