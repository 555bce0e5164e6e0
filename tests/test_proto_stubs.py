"""The generated coordinator stubs: free of runtime-version checks, current with the .proto, and
byte-compatible between this runtime and the RISC-V client's grpcio 1.51.1 / protobuf 4.21.12.

The RISC-V stack is approximated by a venv from scripts/rv_stack_venv.sh (cached under
~/.cache/fedcore/rvstack, first build ~25 s); tests needing it or grpcio-tools skip, saying
why, when pip cannot get the packages (no network), and fail on any other set-up error.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest
from google.protobuf import json_format

from fedcore import certs
from fedcore.proto import coordinator_pb2 as pb
from fedcore.proto import coordinator_pb2_grpc as pbg
from tests.rvstack import set_up

REPO = Path(__file__).resolve().parents[1]
PROTO = REPO / "fedcore" / "proto"
GENERATED = ["coordinator_pb2.py", "coordinator_pb2_grpc.py", "coordinator_pb2.pyi"]
RPCS = {
    "Join": ("unary_unary", "JoinRequest", "JoinReply"),
    "Heartbeat": ("unary_unary", "HeartbeatRequest", "HeartbeatReply"),
    "GetTask": ("unary_unary", "TaskRequest", "TaskReply"),
    "DownloadModel": ("unary_stream", "DownloadRequest", "TensorChunk"),
    "UploadUpdate": ("stream_unary", "UploadChunk", "UploadReply"),
    "Leave": ("unary_unary", "LeaveRequest", "LeaveReply"),
}
# Messages in proto3 JSON form, built from the same dict on both runtimes.
SAMPLES: list[tuple[str, dict[str, Any]]] = [
    (
        "TaskReply",
        {
            "status": "TASK",
            "taskId": "t-17",
            "version": str(2**40 + 3),
            "kind": "train",
            "localSteps": 5,
            "hyper": {"lr": 0.05, "momentum": 0.9, "mu": 1e-3},
            "seed": str(2**64 - 1),
            "deadlineSeconds": 12.5,
        },
    ),
    ("TaskReply", {"status": "DONE"}),
    (
        "JoinRequest",
        {
            "clientId": "alice",
            "numExamples": "600",
            "profile": {
                "architecture": "riscv64",
                "deviceType": "cpu",
                "cores": 4,
                "memoryBytes": str(8 * 2**30),
                "stepSeconds": 0.25,
                "libraries": {"python": "3.13.5", "grpcio": "1.51.1", "protobuf": "4.21.12"},
            },
        },
    ),
    (
        "UploadChunk",
        {"header": {"clientId": "alice", "taskId": "t-17", "metrics": {"loss": 0.5, "acc": 0.75}}},
    ),
    ("UploadChunk", {"frame": "RkNUMQABAgP/"}),
]


def _message(name: str, spec: dict[str, Any]) -> Any:
    """A coordinator message of type `name` built from its proto3 JSON form."""
    return json_format.ParseDict(spec, getattr(pb, name)())


def _run_rv(rv_python: Path, code: str, *args: str) -> Any:
    """Run `code` on the RISC-V stack with only the repo on its path; return its last line's JSON."""
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "HOME": str(Path.home())}
    done = subprocess.run(
        [str(rv_python), "-W", "error", "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


# --- the generated files -------------------------------------------------------------------


@pytest.mark.parametrize("name", GENERATED)
def test_generated_code_has_no_runtime_version_checks(name: str) -> None:
    text = (PROTO / name).read_text()
    assert "runtime_version" not in text
    assert "GRPC_GENERATED_VERSION" not in text


def test_grpc_stub_imports_messages_from_the_package() -> None:
    text = (PROTO / "coordinator_pb2_grpc.py").read_text()
    assert "\nfrom fedcore.proto import coordinator_pb2 as " in text
    assert "\nimport coordinator_pb2" not in text


def test_generated_code_is_current_with_the_proto() -> None:
    """scripts/gen_proto.sh --check regenerates with grpcio-tools 1.51.3 and compares."""
    set_up(["bash", str(REPO / "scripts" / "gen_proto.sh"), "--check"], "gen_proto.sh --check")


def test_messages_round_trip_on_this_runtime() -> None:
    for name, spec in SAMPLES:
        message = _message(name, spec)
        data = message.SerializeToString()
        assert data
        assert getattr(pb, name).FromString(data) == message
        assert json_format.MessageToDict(getattr(pb, name).FromString(data)) == spec
    upload = _message(*SAMPLES[3])
    assert upload.WhichOneof("part") == "header"
    assert pb.TaskReply.FromString(b"").status == pb.TaskReply.WAIT


def test_service_lists_exactly_the_six_rpcs() -> None:
    service = pb.DESCRIPTOR.services_by_name["Coordinator"]
    assert service.full_name == "fedcore.v1.Coordinator"
    assert {
        method.name: (method.input_type.name, method.output_type.name) for method in service.methods
    } == {name: (request, reply) for name, (_, request, reply) in RPCS.items()}

    class RecordingChannel:
        """Records which kind of multi-callable the stub asks for on each path."""

        def __init__(self) -> None:
            self.calls: dict[str, str] = {}

        def __getattr__(self, kind: str) -> Any:
            return lambda path, **_: self.calls.setdefault(path, kind)

    channel = RecordingChannel()
    pbg.CoordinatorStub(channel)
    assert channel.calls == {
        f"/fedcore.v1.Coordinator/{name}": kind for name, (kind, _, _) in RPCS.items()
    }
    assert {name for name in vars(pbg.CoordinatorServicer) if not name.startswith("_")} == set(RPCS)


# --- the RISC-V client's stack --------------------------------------------------------------

SERIALISE_ON_RV = """
import json, sys
import google.protobuf, grpc
from google.protobuf import json_format
from fedcore.proto import coordinator_pb2 as pb, coordinator_pb2_grpc as pbg
from google.protobuf.internal import api_implementation
samples, theirs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
ours = [json_format.ParseDict(spec, getattr(pb, name)()).SerializeToString(deterministic=True).hex()
        for name, spec in samples]
reparsed = [getattr(pb, name).FromString(bytes.fromhex(data)).SerializeToString(deterministic=True).hex()
            for (name, _), data in zip(samples, theirs)]
print(json.dumps({
    "grpc": grpc.__version__, "protobuf": google.protobuf.__version__,
    "implementation": api_implementation.Type(), "ours": ours, "reparsed": reparsed,
    "rpcs": [m.name for m in pb.DESCRIPTOR.services_by_name["Coordinator"].methods],
    "modules": sorted(m for m in sys.modules if m.split(".")[0] in ("fedcore", "torch", "numpy")),
}))
"""


def test_stubs_load_and_serialise_identically_on_the_rv_stack(rv_python: Path) -> None:
    ours = [
        _message(name, spec).SerializeToString(deterministic=True).hex() for name, spec in SAMPLES
    ]
    out = _run_rv(rv_python, SERIALISE_ON_RV, json.dumps(SAMPLES), json.dumps(ours))
    print(f"rv stack: grpcio {out['grpc']}, protobuf {out['protobuf']} ({out['implementation']})")
    assert (out["grpc"], out["protobuf"]) == ("1.51.1", "4.21.12")
    assert out["ours"] == ours  # same bytes from the same message on both runtimes
    assert out["reparsed"] == ours  # and each runtime parses the other's bytes losslessly
    assert out["rpcs"] == list(RPCS)
    assert out["modules"] == [
        "fedcore",
        "fedcore.proto",
        "fedcore.proto.coordinator_pb2",
        "fedcore.proto.coordinator_pb2_grpc",
    ]


CLIENT_ON_RV = """
import json, sys
import grpc
from fedcore import certs
from fedcore.proto import coordinator_pb2 as pb, coordinator_pb2_grpc as pbg
port, root = sys.argv[1], sys.argv[2]
assert certs.certs_main(["add-client", "--dir", root, "--client", "carol"]) == 0
me = certs.load_identity(certs.client_cert_path(root, "carol"))
with open(f"{root}/ca.pem", "rb") as f:
    credentials = grpc.ssl_channel_credentials(f.read(), me.key_pem, me.cert_pem)
out = {}
with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
    stub = pbg.CoordinatorStub(channel)
    task = stub.GetTask(pb.TaskRequest(client_id="carol", session="s"), timeout=10)
    out["task"] = [task.task_id, task.seed, dict(task.hyper)]
    request = pb.DownloadRequest(client_id="carol", task_id=task.task_id)
    frames = [chunk.frame for chunk in stub.DownloadModel(request, timeout=10)]
    def upload():
        yield pb.UploadChunk(header=pb.UploadHeader(client_id="carol", task_id=task.task_id))
        for frame in frames:
            yield pb.UploadChunk(frame=frame)
    reply = stub.UploadUpdate(upload(), timeout=10)
    out["upload"] = [reply.accepted, reply.reason]
    try:
        stub.Leave(pb.LeaveRequest(client_id="alice"), timeout=10)
    except grpc.RpcError as error:
        out["impersonation"] = error.code().name
print(json.dumps(out))
"""


class Coordinator(pbg.CoordinatorServicer):
    """A toy coordinator that serves one task and binds every request to the caller's cert."""

    FRAMES: ClassVar[list[bytes]] = [b"frame-0", b"frame-1" * 1000]

    def __init__(self) -> None:
        self.clients: list[str] = []

    def _caller(self, claimed: str, context: grpc.ServicerContext) -> None:
        """Abort unless `claimed` is the client id in the verified client certificate."""
        certified = certs.peer_client_id(context.auth_context())
        self.clients.append(certified)
        if claimed != certified:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{certified} claimed {claimed}")

    def GetTask(self, request: pb.TaskRequest, context: grpc.ServicerContext) -> pb.TaskReply:
        self._caller(request.client_id, context)
        return pb.TaskReply(
            status=pb.TaskReply.TASK, task_id="t-1", seed=2**63 + 1, hyper={"lr": 0.5}
        )

    def DownloadModel(
        self, request: pb.DownloadRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.TensorChunk]:
        self._caller(request.client_id, context)
        for frame in self.FRAMES:
            yield pb.TensorChunk(frame=frame)

    def UploadUpdate(
        self, request_iterator: Iterator[pb.UploadChunk], context: grpc.ServicerContext
    ) -> pb.UploadReply:
        header = next(request_iterator).header
        self._caller(header.client_id, context)
        frames = [chunk.frame for chunk in request_iterator]
        return pb.UploadReply(accepted=frames == self.FRAMES, reason=f"{len(frames)} frames")

    def Leave(self, request: pb.LeaveRequest, context: grpc.ServicerContext) -> pb.LeaveReply:
        self._caller(request.client_id, context)
        return pb.LeaveReply()


def test_rv_stack_client_talks_mtls_to_this_runtimes_server(
    rv_python: Path, tmp_path: Path
) -> None:
    """grpcio 1.51 client (certificate issued with cryptography 43) ↔ current grpcio server."""
    argv = ["init", "--dir", str(tmp_path), "--server-name", "127.0.0.1", "--client", "alice"]
    assert certs.certs_main(argv) == 0
    identity = certs.load_identity(certs.server_dir(tmp_path) / certs.SERVER_CERT)
    coordinator = Coordinator()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pbg.add_CoordinatorServicer_to_server(coordinator, server)
    credentials = grpc.ssl_server_credentials(
        [(identity.key_pem, identity.cert_pem)],
        root_certificates=(tmp_path / certs.CA_CERT).read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        out = _run_rv(rv_python, CLIENT_ON_RV, str(port), str(tmp_path))
    finally:
        server.stop(grace=None)
    assert out == {
        "task": ["t-1", 2**63 + 1, {"lr": 0.5}],
        "upload": [True, "2 frames"],
        "impersonation": "PERMISSION_DENIED",
    }
    assert coordinator.clients == ["carol"] * 4
    assert certs.enrolled_clients(certs.server_dir(tmp_path)) == ["alice", "carol"]
