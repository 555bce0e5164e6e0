"""`fedcore client`: a deployed client process.

It joins with its device profile, long-polls for tasks, downloads the task's model as
chunked frames, trains with the same LocalTrainer the simulation uses, uploads its update as
chunked frames, and loops until the server says DONE. A lost server is retried with capped
exponential backoff and jitter; credential and authorisation failures end the process at once
with a clear message, since retrying cannot fix them. Imports only what the RISC-V userland
has (no Hydra, no server code).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import torch

from fedcore.clients.profile import device_profile
from fedcore.config import ExperimentConfig
from fedcore.federation import make_federation, model_builder
from fedcore.proto import coordinator_pb2 as pb
from fedcore.proto import coordinator_pb2_grpc as pb_grpc
from fedcore.records import DenseDelta, Task, Update, WorkKind
from fedcore.training import LocalTrainer
from fedcore.wire import VectorAssembler, vector_frames

FATAL_CODES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
TLS_FAILURE_WORDS = ("handshake", "ssl", "certificate", "tls")


class ClientFatal(RuntimeError):
    """A failure that retrying cannot fix (credentials, enrolment, identity)."""


@dataclass(frozen=True)
class ClientSettings:
    """How to reach and authenticate to the server."""

    address: str
    client_id: str
    certs: Path
    server_name: str = ""
    max_backoff: float = 30.0
    poll_seconds: float = 10.0


def channel_for(settings: ClientSettings) -> grpc.Channel:
    """A mutual-TLS channel with the client's certificate from `certs/clients/<id>.pem`."""
    certs = settings.certs
    key_path = certs / "clients" / f"{settings.client_id}.key"
    cert_path = certs / "clients" / f"{settings.client_id}.pem"
    for path in (certs / "ca.pem", key_path, cert_path):
        if not path.exists():
            raise ClientFatal(f"missing credential file {path}")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(certs / "ca.pem").read_bytes(),
        private_key=key_path.read_bytes(),
        certificate_chain=cert_path.read_bytes(),
    )
    options: list[tuple[str, str | int]] = [("grpc.max_receive_message_length", 4 << 20)]
    if settings.server_name:
        options.append(("grpc.ssl_target_name_override", settings.server_name))
    return grpc.secure_channel(settings.address, credentials, options=options)


class ClientAgent:
    """One client's loop over the coordinator service."""

    def __init__(
        self, settings: ClientSettings, config: ExperimentConfig, step_delay: float = 0.0
    ) -> None:
        self.settings = settings
        self.config = config
        self.step_delay = step_delay
        self.federation = make_federation(config)
        self.trainer = LocalTrainer(model_builder(config, self.federation.dataset))
        self.session = ""
        self.number = -1
        self.connected_once = False
        self._stop_heartbeat = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None

    def run(self) -> int:
        """Work until DONE; return the number of updates the server accepted."""
        accepted, backoff = 0, 1.0
        while True:
            channel = channel_for(self.settings)
            try:
                stub = pb_grpc.CoordinatorStub(channel)
                self._join(stub)
                backoff = 1.0
                accepted += self._work(stub)
                return accepted
            except grpc.RpcError as error:
                self._raise_if_fatal(error)
                delay = min(self.settings.max_backoff, backoff) * random.uniform(0.5, 1.0)
                print(
                    f"fedcore client {self.settings.client_id}: server unavailable "
                    f"({error.code().name}); retrying in {delay:.1f} s",
                    flush=True,
                )
                time.sleep(delay)
                backoff *= 2
            finally:
                self._stop_heartbeat.set()
                if self._heartbeat_thread is not None:
                    self._heartbeat_thread.join()
                channel.close()

    def _raise_if_fatal(self, error: grpc.RpcError) -> None:
        details = (error.details() or "").lower()
        if error.code() in FATAL_CODES:
            raise ClientFatal(f"refused by the server: {error.details()}") from None
        if not self.connected_once and any(word in details for word in TLS_FAILURE_WORDS):
            raise ClientFatal(
                f"TLS failure (certificate or server name): {error.details()}"
            ) from None

    def _join(self, stub: pb_grpc.CoordinatorStub) -> None:
        probe = self.federation.dataset.train.subset(torch.arange(64))
        profile = device_profile(self.trainer, probe)
        reply = stub.Join(
            pb.JoinRequest(client_id=self.settings.client_id, profile=profile), timeout=60
        )
        self.connected_once = True
        self.session, self.number = reply.session, reply.client_number
        self._stop_heartbeat = threading.Event()
        self._heartbeat_thread = threading.Thread(
            target=self._heartbeat,
            args=(stub, reply.heartbeat_seconds, self._stop_heartbeat),
            daemon=True,
        )
        self._heartbeat_thread.start()

    def _heartbeat(
        self, stub: pb_grpc.CoordinatorStub, every: float, stop: threading.Event
    ) -> None:
        request = pb.HeartbeatRequest(client_id=self.settings.client_id, session=self.session)
        while not stop.wait(every):
            try:
                stub.Heartbeat(request, timeout=every * 2)
            except grpc.RpcError:
                return

    def _work(self, stub: pb_grpc.CoordinatorStub) -> int:
        accepted = 0
        data = self.federation.train_split(self.number)
        while True:
            reply = stub.GetTask(
                pb.TaskRequest(
                    client_id=self.settings.client_id,
                    session=self.session,
                    wait_seconds=self.settings.poll_seconds,
                ),
                timeout=self.settings.poll_seconds + 30,
            )
            if reply.status == pb.TaskReply.DONE:
                stub.Leave(
                    pb.LeaveRequest(client_id=self.settings.client_id, session=self.session),
                    timeout=30,
                )
                return accepted
            if reply.status == pb.TaskReply.WAIT:
                continue
            task = Task(
                client_id=self.number,
                version=reply.version,
                kind=WorkKind(reply.kind),
                local_steps=reply.local_steps,
                hyper=dict(reply.hyper),
                seed=reply.seed,
            )
            params, buffers = self._download(stub, reply.task_id)
            if self.step_delay:
                time.sleep(self.step_delay * task.local_steps)
            update = self.trainer.train(task, params, buffers, data)
            result = stub.UploadUpdate(self._upload(reply.task_id, update), timeout=600)
            accepted += int(result.accepted)
            if not result.accepted:
                print(
                    f"fedcore client {self.settings.client_id}: update refused: {result.reason}",
                    flush=True,
                )

    def _download(
        self, stub: pb_grpc.CoordinatorStub, task_id: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        layout = self.trainer.bound.layout
        assembler = VectorAssembler(
            {
                "params": (layout.params.numel, layout.params.dtype),
                "buffers": (layout.buffers.numel, layout.buffers.dtype),
            }
        )
        request = pb.DownloadRequest(
            client_id=self.settings.client_id,
            session=self.session,
            task_id=task_id,
            chunk_bytes=self.config.deployment.chunk_bytes,
        )
        for chunk in stub.DownloadModel(request, timeout=600):
            assembler.add(chunk.frame)
        vectors = assembler.result()
        return vectors["params"], vectors["buffers"]

    def _upload(self, task_id: str, update: Update) -> Iterator[pb.UploadChunk]:
        yield pb.UploadChunk(
            header=pb.UploadHeader(
                client_id=self.settings.client_id,
                session=self.session,
                task_id=task_id,
                base_version=update.base_version,
                num_examples=update.num_examples,
                local_steps=update.local_steps,
                compute_seconds=update.compute_seconds,
                wall_seconds=update.wall_seconds,
                metrics=update.metrics,
                payload="dense",
            )
        )
        if not isinstance(update.payload, DenseDelta):
            raise TypeError("the client uploads dense deltas")
        buffers = update.buffers if update.buffers is not None else torch.zeros(0)
        vectors = {"delta": update.payload.values, "buffers": buffers}
        for frame in vector_frames(vectors, self.config.deployment.chunk_bytes):
            yield pb.UploadChunk(frame=frame)
