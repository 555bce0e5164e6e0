"""Payloads over gRPC against a live `fedcore server`: a plug-in technique, sparse (top-k) and
seeds uploads round-trip bit for bit against the simulation, each malformed payload is refused
with its reason in the reply and the ledger while the server keeps serving, and a client with its
own `--data` reports federated evaluation on that data."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
import yaml

from fedcore.clients.agent import local_splits
from fedcore.config import ExperimentConfig
from fedcore.proto import coordinator_pb2 as pb
from fedcore.proto import coordinator_pb2_grpc as pb_grpc
from fedcore.serialization import MAGIC
from fedcore.server.evaluation import Scorer
from fedcore.server.experiment import make_experiment
from fedcore.server.ledger import read_ledger
from fedcore.server.rundir import read_model_file
from fedcore.server.simulation import simulate
from fedcore.typed_config import build
from fedcore.wire import vector_frames
from tests.processes import (
    PLUGIN_ENV,
    client,
    finish_federation,
    make_certs,
    server_port,
    start_server,
)

pytestmark = pytest.mark.slow

PROBE = [
    "plugins=[tests.plugins.payload_probe,tests.plugins.sign_sgd]",
    "strategy.name=payload_probe",
    "training.technique=sign_sgd",
    "training.lr=0.01",
    "training.transforms=[{name: topk, fraction: 0.1}]",
    "dataset=synthetic",
    "model=mlp",
    "num_clients=2",
    "output.progress=off",
    "deployment.address=127.0.0.1:0",
    "deployment.heartbeat_seconds=0.5",
    "deployment.liveness_timeout=30",  # liveness is not under test: load must not trip it
]


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Client-0 trains with the sign_sgd plug-in and uploads top-k sparse deltas; client-1 brings
    its own data and uploads seeds; returns the server's run directory."""
    root = tmp_path_factory.mktemp("payloads")
    make_certs(root, 2)
    server = start_server(
        root, *PROBE, "clients_per_round=2", "rounds=3", "training.local_steps=5", env=PLUGIN_ENV
    )
    port = server_port(server)
    config = build(ExperimentConfig, _config(root / "run"))
    dataset = make_experiment(_config(root / "run")).federation.dataset
    x, y = dataset.test.x[:200].numpy(), dataset.test.y[:200].numpy()
    np.savez(root / "own.npz", x=x, y=y)
    assert config.num_clients == 2
    clients = [
        client(root, port, 0, env=PLUGIN_ENV),
        client(root, port, 1, "--data", str(root / "own.npz"), env=PLUGIN_ENV),
    ]
    finish_federation(server, clients, accepted=3)
    return root / "run"


def _config(run: Path) -> dict:
    data = yaml.safe_load((run / "config.yaml").read_text())
    data.pop("hydra", None)
    return data


def test_plugin_sparse_and_seed_payloads_round_trip_as_in_the_simulation(probe_run: Path):
    entries = read_ledger(probe_run / "ledger.jsonl")
    accepted = [e for e in entries if e["event"] == "accepted"]
    assert {(e["client"], e["payload"]) for e in accepted} == {(0, "sparse"), (1, "seeds")}
    assert all(e["count"] == 5 for e in accepted if e["payload"] == "seeds")
    config = _config(probe_run)
    simulated = simulate(config, probe_run.parent / "simulated")
    sim_entries = read_ledger(probe_run.parent / "simulated" / "ledger.jsonl")
    digests = [e["digests"] for e in entries if e["event"] == "model"]
    assert digests == [e["digests"] for e in sim_entries if e["event"] == "model"]
    assert len(digests) == 3 and all(len(d) == 2 for d in digests)
    layout = make_experiment(config).layout
    deployed, _ = read_model_file(probe_run / "model.fct", layout)
    again, _ = read_model_file(probe_run.parent / "simulated" / "model.fct", layout)
    assert torch.equal(deployed, again), "the sparse fold and the sign_sgd client, bit for bit"
    assert simulated["versions"] == 3


def test_a_client_with_its_own_data_reports_federated_evaluation_on_it(probe_run: Path):
    config = _config(probe_run)
    experiment = make_experiment(config)
    params, buffers = read_model_file(probe_run / "model.fct", experiment.layout)
    with np.load(probe_run.parent / "own.npz") as own:
        from fedcore.data import Split

        data = Split(torch.from_numpy(own["x"]), torch.from_numpy(own["y"]))
    _, holdout = local_splits(data, build(ExperimentConfig, config))
    expected = Scorer(experiment.build_model, experiment.layout)(params, buffers, holdout)
    entries = read_ledger(probe_run / "ledger.jsonl")
    (final,) = [
        e
        for e in entries
        if e["event"] == "evaluated" and e["client"] == 1 and e["base_version"] == 3
    ]
    assert final["examples"] == len(holdout) == 20
    assert final["eval_accuracy"] == pytest.approx(expected["accuracy"], abs=1e-9)
    assert final["eval_loss"] == pytest.approx(expected["loss"], rel=1e-5)
    rows = [json.loads(line) for line in (probe_run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["version"] == 3 and rows[-1]["fed_examples"] > len(holdout)


@pytest.fixture(scope="module")
def probe_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A payload_probe server with one-client rounds that never end; yields (port, root)."""
    root = tmp_path_factory.mktemp("payload-refusals")
    make_certs(root, 2)
    server = start_server(
        root,
        *PROBE,
        "clients_per_round=1",
        "rounds=1000",
        "evaluation.every=1000",
        "training.local_steps=10",
        env=PLUGIN_ENV,
    )
    try:
        yield server_port(server), root
    finally:
        server.terminate()
        server.wait(timeout=30)


def _stub(port: int, certs: Path, name: str) -> pb_grpc.CoordinatorStub:
    credentials = grpc.ssl_channel_credentials(
        (certs / "ca.pem").read_bytes(),
        (certs / "clients" / f"{name}.key").read_bytes(),
        (certs / "clients" / f"{name}.pem").read_bytes(),
    )
    channel = grpc.secure_channel(
        f"127.0.0.1:{port}", credentials, options=[("grpc.ssl_target_name_override", "localhost")]
    )
    return pb_grpc.CoordinatorStub(channel)


class RawClient:
    """An enrolled client that uploads hand-made payloads."""

    def __init__(self, port: int, root: Path, name: str, device_name: str = "") -> None:
        self.name = name
        self.stub = _stub(port, root / "certs", name)
        profile = pb.DeviceProfile(device_name=device_name)
        joined = self.stub.Join(pb.JoinRequest(client_id=name, profile=profile), timeout=10)
        self.session = joined.session
        spec = json.loads(joined.model_spec_json)
        self.size = sum(torch.Size(shape).numel() for _, shape in spec["params"]["tensors"])

    def task(self) -> pb.TaskReply:
        for _ in range(20):
            reply = self.stub.GetTask(
                pb.TaskRequest(client_id=self.name, session=self.session, wait_seconds=2),
                timeout=10,
            )
            if reply.status == pb.TaskReply.TASK and reply.kind != "evaluate":
                return reply
        raise AssertionError("no task dispatched")

    def upload(
        self,
        kind: str,
        count: int,
        vectors: dict,
        encoding: str = "",
        metrics: dict | None = None,
        raw_frames: list[bytes] | None = None,
    ) -> pb.UploadReply:
        task = self.task()
        header = pb.UploadHeader(
            client_id=self.name,
            session=self.session,
            task_id=task.task_id,
            base_version=task.version,
            num_examples=10,
            payload=kind,
            count=count,
            encoding=encoding,
            metrics=metrics or {},
        )
        frames = raw_frames or [
            b"".join(f) for f in vector_frames({**vectors, "buffers": torch.zeros(0)})
        ]
        chunks = [pb.UploadChunk(header=header), *(pb.UploadChunk(frame=f) for f in frames)]
        return self.stub.UploadUpdate(iter(chunks), timeout=30)

    def leave(self) -> None:
        self.stub.Leave(pb.LeaveRequest(client_id=self.name, session=self.session), timeout=10)


def _sparse(indices, values=None, index_dtype=torch.int64) -> dict:
    indices = torch.tensor(indices, dtype=index_dtype)
    values = torch.ones(len(indices)) if values is None else values
    return {"indices": indices, "values": values}


def test_malformed_payloads_are_refused_with_reasons_and_the_server_keeps_serving(probe_server):
    port, root = probe_server
    sparse_client = RawClient(port, root, "client-0", device_name="x" * 3_500_000)
    size = sparse_client.size
    mask = torch.zeros((size + 7) // 8, dtype=torch.uint8)
    mask[-1] = 0xFF  # bits past the model when size is not a multiple of 8
    sparse_cases = [
        ("sparse", 2, _sparse([4, 4]), "indices", "duplicate index 4 at position 1"),
        ("sparse", 2, _sparse([7, 3]), "indices", "unsorted index 3 at position 1"),
        ("sparse", 2, _sparse([1, size]), "indices", f"index {size} out of range"),
        (
            "sparse",
            2,
            _sparse([1.0, 2.0], index_dtype=torch.float32),
            "indices",
            "indices: dtype float32",
        ),
        ("sparse", 3, _sparse([1, 2]), "indices", "indices: shape (2,), expected (3,)"),
        ("sparse", 2, _sparse([1, 2], torch.tensor([1.0, float("nan")])), "indices", "NaN or Inf"),
        ("sparse", size + 1, _sparse([1]), "indices", "above the bound"),
        ("sparse", 2, _sparse([1, 2]), "bits", "sparse encoding 'bits' is not indices or mask"),
        (
            "dense",
            size,
            {"delta": torch.zeros(size)},
            "",
            "payload type dense, the task asked for sparse",
        ),
        ("weird", 0, {}, "", "unknown payload type 'weird'"),
    ]
    if size % 8:
        sparse_cases.append(
            ("sparse", 8, {"mask": mask, "values": torch.ones(8)}, "mask", "bits past the model")
        )
    reasons = []
    for kind, count, vectors, encoding, reason in sparse_cases:
        reply = sparse_client.upload(kind, count, vectors, encoding)
        assert not reply.accepted and reason in reply.reason, (reason, reply.reason)
        reasons.append(reply.reason)
    deep = ("[" * 8000 + "]" * 8000).encode()
    deep_frame = MAGIC + struct.pack("<I", len(deep)) + deep
    hostile = [
        ({"raw_frames": [deep_frame]}, "frame header is not valid JSON: JSON nested deeper"),
        ({"metrics": {"m" * 100: 1.0}}, "a metric name is longer than 64 characters"),
    ]
    for extra, reason in hostile:
        reply = sparse_client.upload("sparse", 2, _sparse([1, 2]), "indices", **extra)
        assert not reply.accepted and reason in reply.reason, (reason, reply.reason)
        reasons.append(reply.reason)
    assert sparse_client.upload("sparse", 2, _sparse([0, 5]), "indices").accepted
    sparse_client.leave()

    seed_client = RawClient(port, root, "client-1")
    seeds = lambda s, x=None: {  # noqa: E731
        "seeds": torch.tensor(s, dtype=torch.int64),
        "scalars": torch.ones(len(s)) if x is None else x,
    }
    seed_cases = [
        ("seeds", 2, seeds([3, 64]), "index 64 out of range [0, 64)"),
        ("seeds", 2, seeds([3, 3]), "duplicate index 3"),
        ("seeds", 11, seeds(list(range(11))), "header count 11 above the bound 10"),
        ("seeds", 1, seeds([1], torch.tensor([float("inf")])), "NaN or Inf"),
        ("sparse", 1, _sparse([1]), "payload type sparse, the task asked for seeds"),
    ]
    for kind, count, vectors, reason in seed_cases:
        encoding = "indices" if kind == "sparse" else ""
        reply = seed_client.upload(kind, count, vectors, encoding)
        assert not reply.accepted and reason in reply.reason, (reason, reply.reason)
        reasons.append(reply.reason)
    assert seed_client.upload("seeds", 2, seeds([0, 63])).accepted
    assert seed_client.stub.Heartbeat(
        pb.HeartbeatRequest(client_id="client-1", session=seed_client.session), timeout=10
    ).known, "the server keeps serving"
    entries = read_ledger(root / "run" / "ledger.jsonl")
    assert [e["reason"] for e in entries if e["event"] == "rejected"] == reasons
    (join,) = [e for e in entries if e["event"] == "join" and e["client"] == 0]
    assert join["profile"]["device_name"].endswith("(3499744 more characters)")
    assert (root / "run" / "ledger.jsonl").stat().st_size < 100_000, "no 3.5 MB string stored"
