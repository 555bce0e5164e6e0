"""Deployment transport: real `fedcore server` and client processes over mutual TLS on loopback.

Round trips: a tiny, a 100 MB and a 1 GB model (synthetic data, MLP), 2 clients doing one local
step per round. Round latency is the median gap between consecutive model versions on the
server's clock (version 1, which includes the clients' start-up, is left out); throughput is the
model bytes moved per second of those rounds; peak RSS comes from the server's summary and each
client's closing line, which also gives the client's peak before its model existed (interpreter,
libraries, data): the client's memory for the model is its peak less that, held to
CLIENT_MODEL_MEMORY_TARGET model sizes. Checkpoints are off in these runs (they are measured separately for the
100 MB model), so the figure is transport plus aggregation.

Concurrent uploads: raw gRPC uploaders push a 1 GB update each at the same moment. The server's
RSS before any upload and at its peak are compared for 1 and 4 uploads with the default (one
upload received in memory, the others spooled to disk) and 4 held in memory
(`deployment.spool_bytes=0`), as multiples of the model size:
with streaming aggregation the peak must not grow with the number of concurrent uploads.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import torch

from benchmarks.common import (
    GB,
    MIB,
    REPO_ROOT,
    environment,
    make_parser,
    print_table,
    verdict,
    write_result,
)
from fedcore.certs import certs_main
from fedcore.clients.main import client_arguments
from fedcore.proto import coordinator_pb2 as pb
from fedcore.proto import coordinator_pb2_grpc as pb_grpc
from fedcore.serialization import encode
from fedcore.server.ledger import read_ledger

#: name -> (MLP hidden widths on 20 synthetic features, rounds)
MODELS = {
    "tiny": ((200,), 30),
    "100MB": ((5000, 5000), 10),
    "1GB": ((16384, 16384), 3),
}
QUICK_MODELS = {"tiny": ((200,), 8), "16MB": ((2000, 2000), 4)}
LATENCY_TARGETS_S = {"tiny": 0.1, "100MB": 0.6, "1GB": 6.0}
#: A client's peak RSS above what it held before building its model, in model sizes: its
#: trainer's weights, their gradient and the download buffer that also holds the delta.
CLIENT_MODEL_MEMORY_TARGET = 3.0
#: Streaming aggregation: 4 concurrent spooled uploads may raise the server's peak over a single
#: upload's by at most this many model sizes, and the peak stays within a small multiple of it.
MEMORY_TARGETS = {"growth_4_vs_1": 0.5, "peak_over_model": 4.0}
CHUNK = 1 << 20


def _params(hidden: Sequence[int]) -> int:
    widths = [20, *hidden, 10]
    return sum(a * b + b for a, b in itertools.pairwise(widths))


def _overrides(hidden: Sequence[int], rounds: int, clients: int, *extra: str) -> list[str]:
    return [
        "dataset=synthetic",
        "model=mlp",
        f"model.options={{hidden: [{', '.join(map(str, hidden))}]}}",
        f"num_clients={clients}",
        f"clients_per_round={clients}",
        f"rounds={rounds}",
        "training.local_steps=1",
        "training.momentum=0.0",
        f"evaluation.every={rounds}",
        "evaluation.test_examples=200",
        "evaluation.federated_clients=0",
        "output.progress=off",
        "output.plot=false",
        "output.save_model=false",
        "deployment.heartbeat_seconds=1.0",
        "deployment.liveness_timeout=60",
        "client_devices.cpu.threads=1",
        *(extra or ["deployment.checkpoint_every=0"]),
    ]


def _start_server(root: Path, overrides: list[str]) -> tuple[subprocess.Popen[str], int]:
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedcore.cli",
            "server",
            *overrides,
            "deployment.address=127.0.0.1:0",
            f"deployment.certs={root / 'certs' / 'server'}",
            f"hydra.run.dir={root / 'run'}",
        ],
        cwd=REPO_ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert server.stdout is not None
    for line in server.stdout:
        found = re.search(r"listening on port (\d+)", line)
        if found:
            return server, int(found.group(1))
    raise RuntimeError(f"server exited with {server.wait()} before listening")


def _client(root: Path, port: int, number: int) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "fedcore.cli", "client"]
    arguments = client_arguments(
        f"127.0.0.1:{port}",
        f"client-{number}",
        root / "certs",
        root / "run" / "config.yaml",
        "localhost",
    )
    return subprocess.Popen(
        [*command, *arguments],
        cwd=REPO_ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _make_certs(root: Path, clients: int) -> None:
    code = certs_main(
        [
            "init",
            "--dir",
            str(root / "certs"),
            "--server-name",
            "localhost",
            "--clients",
            str(clients),
        ]
    )
    if code:
        raise RuntimeError("fedcore certs init failed")


def _finish(server: subprocess.Popen[str], root: Path) -> dict[str, Any]:
    output = server.communicate(timeout=1800)[0]
    if server.returncode:
        raise RuntimeError(f"server exited with {server.returncode}:\n{output}")
    summary: dict[str, Any] = json.loads((root / "run" / "summary.json").read_text())
    return summary


def round_trip(name: str, hidden: Sequence[int], rounds: int, *extra: str) -> dict[str, Any]:
    """One server and two `fedcore client` processes for `rounds` one-step rounds."""
    params = _params(hidden)
    with tempfile.TemporaryDirectory(prefix="fedcore-transport-") as folder:
        root = Path(folder)
        _make_certs(root, 2)
        server, port = _start_server(root, _overrides(hidden, rounds, 2, *extra))
        clients = [_client(root, port, i) for i in range(2)]
        outputs = [c.communicate(timeout=1800)[0] for c in clients]
        summary = _finish(server, root)
        for client, output in zip(clients, outputs, strict=True):
            if client.returncode:
                raise RuntimeError(f"client exited with {client.returncode}:\n{output}")
        models = [e for e in read_ledger(root / "run" / "ledger.jsonl") if e["event"] == "model"]
    times = [m["time"] for m in models]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    model_bytes = params * 4
    moved = 4 * model_bytes * len(gaps)
    client_rss = [
        (int(found.group(1)) * MIB, int(found.group(2)) * MIB)
        for output in outputs
        if (found := re.search(r"peak RSS (\d+) MiB, (\d+) MiB before the model", output))
    ]
    if len(client_rss) != len(outputs):
        raise RuntimeError(f"a client did not report its peak RSS:\n{outputs}")
    client_peak, client_before = max(client_rss, key=lambda pair: pair[0] - pair[1])
    return {
        "model": name,
        "params": params,
        "model_bytes": model_bytes,
        "rounds": rounds,
        "extra_overrides": list(extra),
        "round_latency_median_s": statistics.median(gaps),
        "round_latency_all_s": gaps,
        "throughput_mb_s": moved / sum(gaps) / 1e6,
        "server_peak_rss_bytes": summary["peak_rss_bytes"],
        "client_peak_rss_bytes": client_peak,
        "client_rss_before_model_bytes": client_before,
        "client_model_memory_over_model": (client_peak - client_before) / model_bytes,
    }


def _update_stream(
    name: str, session: str, task: pb.TaskReply, params: int
) -> Iterator[pb.UploadChunk]:
    """An upload of a constant `params`-element delta for `task`, made one chunk at a time."""
    yield pb.UploadChunk(
        header=pb.UploadHeader(
            client_id=name,
            session=session,
            task_id=task.task_id,
            base_version=task.version,
            num_examples=100,
            local_steps=1,
            payload="dense",
            count=params,
        )
    )
    chunk = torch.full((CHUNK // 4,), 1e-4)
    for start in range(0, params, chunk.numel()):
        piece = chunk[: min(chunk.numel(), params - start)]
        yield pb.UploadChunk(frame=encode(piece, "delta", start, (params,)))
    yield pb.UploadChunk(frame=encode(torch.zeros(0), "buffers", 0, (0,)))


def _uploader(port: int, certs: Path, number: int, params: int) -> None:
    """Join as client-`number`, wait for a task and upload a `params`-element update made chunk
    by chunk (so this process never holds the update), then leave when the server is done."""
    name = f"client-{number}"
    credentials = grpc.ssl_channel_credentials(
        (certs / "ca.pem").read_bytes(),
        (certs / "clients" / f"{name}.key").read_bytes(),
        (certs / "clients" / f"{name}.pem").read_bytes(),
    )
    options = [("grpc.ssl_target_name_override", "localhost")]
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials, options) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        join = stub.Join(pb.JoinRequest(client_id=name, profile=pb.DeviceProfile()), timeout=600)
        while True:
            task = stub.GetTask(
                pb.TaskRequest(client_id=name, session=join.session, wait_seconds=10), timeout=60
            )
            if task.status == pb.TaskReply.DONE:
                with contextlib.suppress(grpc.RpcError):  # the server may have stopped already
                    stub.Leave(pb.LeaveRequest(client_id=name, session=join.session), timeout=60)
                return
            if task.status != pb.TaskReply.TASK:
                continue
            reply = stub.UploadUpdate(
                _update_stream(name, join.session, task, params), timeout=1800
            )
            if not reply.accepted:
                raise RuntimeError(f"{name}: upload refused: {reply.reason}")


def _rss_bytes(pid: int) -> int:
    """A process's resident set size now (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def concurrent_uploads(hidden: Sequence[int], spool_bytes: int, uploaders: int) -> dict[str, Any]:
    """Server RSS while `uploaders` clients send a full-size update each at the same moment:
    before any upload (the model, the runtime) and at its peak."""
    params = _params(hidden)
    with tempfile.TemporaryDirectory(prefix="fedcore-uploads-") as folder:
        root = Path(folder)
        _make_certs(root, uploaders)
        overrides = _overrides(
            hidden,
            1,
            uploaders,
            f"deployment.spool_bytes={spool_bytes}",
            "deployment.checkpoint_every=0",
        )
        server, port = _start_server(root, overrides)
        idle = _rss_bytes(server.pid)
        processes = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.transport",
                    "--uploader",
                    f"{port},{root / 'certs'},{i},{params}",
                ],
                cwd=REPO_ROOT,
            )
            for i in range(uploaders)
        ]
        for process in processes:
            if process.wait(timeout=1800):
                raise RuntimeError("an uploader failed")
        summary = _finish(server, root)
    model_bytes = params * 4
    return {
        "params": params,
        "model_bytes": model_bytes,
        "spool_bytes": spool_bytes,
        "uploaders": uploaders,
        "server_idle_rss_bytes": idle,
        "server_peak_rss_bytes": summary["peak_rss_bytes"],
        "peak_rss_over_model": summary["peak_rss_bytes"] / model_bytes,
        "upload_growth_over_model": (summary["peak_rss_bytes"] - idle) / model_bytes,
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Run the round-trip and concurrent-upload cases; print tables; write transport.json."""
    parser = make_parser(__doc__ or "")
    parser.add_argument("--uploader", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.uploader:
        port, certs, number, params = args.uploader.split(",")
        _uploader(int(port), Path(certs), int(number), int(params))
        return
    models = QUICK_MODELS if args.quick else MODELS
    trips = [round_trip(name, hidden, rounds) for name, (hidden, rounds) in models.items()]
    mid_name = "16MB" if args.quick else "100MB"
    mid_hidden, mid_rounds = models[mid_name]
    checkpointed = round_trip(mid_name, mid_hidden, mid_rounds, "deployment.checkpoint_every=1")
    upload_hidden = models["16MB" if args.quick else "1GB"][0]
    spool_bytes = 4 << 20 if args.quick else 64 << 20
    uploads = [
        concurrent_uploads(upload_hidden, spool, uploaders)
        for spool, uploaders in ((spool_bytes, 1), (spool_bytes, 4), (0, 4))
    ]
    latency_passed = {
        trip["model"]: trip["round_latency_median_s"] <= LATENCY_TARGETS_S[trip["model"]]
        for trip in trips
        if trip["model"] in LATENCY_TARGETS_S
    }
    client_memory_passed = {
        trip["model"]: trip["client_model_memory_over_model"] <= CLIENT_MODEL_MEMORY_TARGET
        for trip in trips
        if trip["model"] in ("100MB", "1GB")
    }
    alone, spooled, in_memory = uploads
    streaming = {
        "spooled_4_vs_1_growth_over_model": (
            spooled["server_peak_rss_bytes"] - alone["server_peak_rss_bytes"]
        )
        / spooled["model_bytes"],
        "spooled_4_peak_over_model": spooled["peak_rss_over_model"],
    }
    result = {
        "benchmark": "transport",
        "quick": args.quick,
        "environment": environment(),
        "round_trips": trips,
        "round_trip_with_checkpoints": checkpointed,
        "concurrent_uploads": uploads,
        "latency_targets_s": LATENCY_TARGETS_S,
        "streaming": streaming,
        "memory_targets": MEMORY_TARGETS,
        "client_model_memory_target": CLIENT_MODEL_MEMORY_TARGET,
        "passed": all(latency_passed.values())
        and all(client_memory_passed.values())
        and streaming["spooled_4_vs_1_growth_over_model"] <= MEMORY_TARGETS["growth_4_vs_1"]
        and streaming["spooled_4_peak_over_model"] <= MEMORY_TARGETS["peak_over_model"]
        and spooled["server_peak_rss_bytes"] < in_memory["server_peak_rss_bytes"],
        "latency_passed": latency_passed,
        "client_memory_passed": client_memory_passed,
    }
    print_table(
        "Model round trips over loopback mTLS (2 clients, 1 local step per round)",
        [
            "model",
            "params",
            "round latency (median)",
            "target",
            "MB/s",
            "server peak RSS",
            "client peak RSS",
            "client, for the model",
        ],
        [
            [
                trip["model"],
                f"{trip['params']:,}",
                f"{trip['round_latency_median_s'] * 1e3:.0f} ms",
                f"<= {LATENCY_TARGETS_S[trip['model']] * 1e3:.0f} ms"
                if trip["model"] in LATENCY_TARGETS_S
                else "-",
                f"{trip['throughput_mb_s']:.0f}",
                f"{trip['server_peak_rss_bytes'] / GB:.2f} GB ({trip['server_peak_rss_bytes'] / trip['model_bytes']:.1f}x)",
                f"{trip['client_peak_rss_bytes'] / GB:.2f} GB ({trip['client_peak_rss_bytes'] / trip['model_bytes']:.1f}x)",
                f"{trip['client_model_memory_over_model']:.1f}x"
                + (
                    f" (<= {CLIENT_MODEL_MEMORY_TARGET:g}x "
                    f"{verdict(client_memory_passed[trip['model']])})"
                    if trip["model"] in client_memory_passed
                    else ""
                ),
            ]
            for trip in [*trips, {**checkpointed, "model": f"{mid_name} + checkpoints"}]
        ],
    )
    print_table(
        "Server RSS while full-size updates upload at the same moment",
        ["uploads", "uploaders", "model", "idle RSS", "peak RSS", "peak x model", "growth x model"],
        [
            [
                "one in memory, the rest spooled" if case["spool_bytes"] else "all in memory",
                str(case["uploaders"]),
                f"{case['model_bytes'] / GB:.2f} GB",
                f"{case['server_idle_rss_bytes'] / GB:.2f} GB",
                f"{case['server_peak_rss_bytes'] / GB:.2f} GB",
                f"{case['peak_rss_over_model']:.1f}x",
                f"{case['upload_growth_over_model']:.1f}x",
            ]
            for case in uploads
        ],
    )
    print(
        f"4 spooled uploads vs 1: peak grows by {streaming['spooled_4_vs_1_growth_over_model']:.2f}"
        f"x model (target <= {MEMORY_TARGETS['growth_4_vs_1']}x); peak "
        f"{streaming['spooled_4_peak_over_model']:.1f}x model "
        f"(target <= {MEMORY_TARGETS['peak_over_model']}x)"
    )
    print(f"verdict: {verdict(result['passed'])}")
    write_result("transport", result, args.out)


if __name__ == "__main__":
    main()
