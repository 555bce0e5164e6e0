"""No client can stall a live `fedcore server`: a task that its client never finishes expires at
`deployment.task_timeout` although the client stays connected, an upload that drips in is cut at
`deployment.upload_timeout`, both are recorded with their reason, and training goes on; uploads
that never send a header end at the same deadline, one client cannot hold more than a few
transfers open, and a connection that never starts TLS is closed at the handshake timeout."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch

from fedcore.proto import coordinator_pb2 as pb
from fedcore.server.ledger import read_ledger
from fedcore.wire import vector_frames
from tests.processes import (
    client,
    finish_federation,
    make_certs,
    server_port,
    start_server,
    wait_for,
)
from tests.test_deployment_payloads import RawClient

pytestmark = pytest.mark.slow


def test_a_never_finishing_and_a_drip_feeding_client_do_not_stop_training(tmp_path: Path):
    make_certs(tmp_path, 3)
    server = start_server(
        tmp_path,
        "dataset=synthetic",
        "model=logreg",
        "num_clients=3",
        "clients_per_round=1",
        "rounds=2",
        "training.local_steps=2",
        "output.progress=off",
        "evaluation.federated_clients=0",
        "deployment.address=127.0.0.1:0",
        "deployment.liveness_timeout=60",
        "deployment.task_timeout=3",
        "deployment.upload_timeout=2",
        "deployment.handshake_timeout=2",
    )
    port = server_port(server)
    ledger = tmp_path / "run" / "ledger.jsonl"

    silent = RawClient(port, tmp_path, "client-2")
    silent.task()
    wait_for(
        lambda: any(e["event"] == "lost" for e in read_ledger(ledger)), 30, "the task to expire"
    )
    assert silent.stub.Heartbeat(
        pb.HeartbeatRequest(client_id="client-2", session=silent.session), timeout=10
    ).known, "the client was still connected when its task expired"
    silent.leave()

    idle = socket.create_connection(("127.0.0.1", port))
    idle.settimeout(30)
    opened = time.monotonic()
    assert idle.recv(1) == b"", "the server closes a connection that never starts TLS"
    assert time.monotonic() - opened < 15
    idle.close()

    dripper = RawClient(port, tmp_path, "client-1")

    def headerless() -> Iterator[pb.UploadChunk]:
        time.sleep(20)
        yield from ()

    hanging = [dripper.stub.UploadUpdate.future(headerless(), timeout=30) for _ in range(4)]
    time.sleep(0.5)
    with pytest.raises(grpc.RpcError) as refused:
        dripper.stub.UploadUpdate(headerless(), timeout=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "already has 4 uploads or downloads open" in refused.value.details()
    for call in hanging:
        with pytest.raises(grpc.RpcError) as cut:
            call.result()
        assert cut.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "no upload header within deployment.upload_timeout (2 s)" in cut.value.details()

    task = dripper.task()
    header = pb.UploadHeader(
        client_id="client-1",
        session=dripper.session,
        task_id=task.task_id,
        base_version=task.version,
        num_examples=10,
        payload="dense",
        count=dripper.size,
    )
    frames = [
        b"".join(f)
        for f in vector_frames(
            {"delta": torch.zeros(dripper.size), "buffers": torch.zeros(0)}, chunk_bytes=64
        )
    ]

    def drip() -> Iterator[pb.UploadChunk]:
        yield pb.UploadChunk(header=header)
        for frame in frames[:-1]:
            time.sleep(1.0)
            yield pb.UploadChunk(frame=frame)

    started = time.monotonic()
    reply = dripper.stub.UploadUpdate(drip(), timeout=60)
    assert not reply.accepted
    assert "upload not complete within deployment.upload_timeout (2 s)" in reply.reason
    assert len(frames) > 10
    assert time.monotonic() - started < len(frames) / 2, "cut at the deadline, not at the end"
    dripper.leave()

    finish_federation(server, [client(tmp_path, port, 0)], accepted=2)
    entries = read_ledger(ledger)
    (expired,) = [e for e in entries if e["event"] == "lost" and "reason" in e]
    assert expired["client"] == 2 and "deployment.task_timeout (3 s)" in expired["reason"]
    (rejected,) = [e for e in entries if e["event"] == "rejected"]
    assert rejected["client"] == 1 and "upload_timeout" in rejected["reason"]
    assert [e["version"] for e in entries if e["event"] == "model"] == [1, 2]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["complete"] is True
