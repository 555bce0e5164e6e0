"""`fedcore client`: a deployed client process.

It joins with its device profile, long-polls for tasks, downloads the task's model as
chunked frames, trains with the same LocalTrainer the simulation uses, uploads its update as
chunked frames, and loops until the server says DONE. A lost server is retried with capped
exponential backoff and jitter; credential and authorisation failures end the process at once
with a clear message, since retrying cannot fix them. Imports only what the RISC-V userland
has (no Hydra, no server code).
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import torch

from fedcore.clients.device import ClientDevice
from fedcore.clients.local_data import load_local_data
from fedcore.clients.profile import calibrate, calibration_task, device_profile, profile_line
from fedcore.config import ExperimentConfig
from fedcore.data import Split
from fedcore.federation import make_federation, model_builder
from fedcore.proto import coordinator_pb2 as pb
from fedcore.proto import coordinator_pb2_grpc as pb_grpc
from fedcore.records import DenseDelta, Task, Update, WorkKind
from fedcore.rpc import UPLOAD_FRAME_FIELD, coordinator_stub, frame_message
from fedcore.serialization import DTYPES, FrameError
from fedcore.training import LocalTrainer, planned_steps
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
        self,
        settings: ClientSettings,
        config: ExperimentConfig,
        step_delay: float = 0.0,
        device: ClientDevice | None = None,
        data: str = "",
    ) -> None:
        self.settings = settings
        self.config = config
        self.step_delay = step_delay
        self.device = device or ClientDevice(torch.device("cpu"), config.client_devices.cpu)
        self.federation = make_federation(config)
        self.local_data = load_local_data(data, self.federation.dataset) if data else None
        self.trainer = LocalTrainer(
            model_builder(config, self.federation.dataset), device=self.device.device
        )
        self.profile: pb.DeviceProfile | None = None
        self.session = ""
        self.number = -1
        self.connected_once = False
        self._stop_heartbeat = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None
        #: Set when a heartbeat reply says training is over.
        self.server_done = threading.Event()
        #: Updates the server accepted, over every session of this run.
        self.accepted = 0
        #: The last downloaded model's tensors, refilled by the next download (tasks run one at
        #: a time, and nothing keeps them once the update is uploaded).
        self._model_memory: dict[str, torch.Tensor] = {}

    def run(self) -> int:
        """Work until DONE; return the number of updates the server accepted."""
        backoff = 1.0
        while True:
            channel = channel_for(self.settings)
            try:
                stub = coordinator_stub(channel)
                self._join(stub)
                backoff = 1.0
                self._work(stub)
                return self.accepted
            except grpc.RpcError as error:
                self._raise_if_fatal(error)
                if self.server_done.is_set():
                    print(
                        f"fedcore client {self.settings.client_id}: the server finished training "
                        "while this client was working; its last update is not needed",
                        flush=True,
                    )
                    return self.accepted
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

    def measure_profile(self) -> pb.DeviceProfile:
        """The device profile, calibrated once (at the first join) on the configured model and
        training hyper-parameters through the same path tasks take (`_train`)."""
        if self.profile is None:
            train = self.federation.dataset.train
            probe = train.subset(
                torch.arange(min(len(train), max(64, self.config.training.batch_size)))
            )
            params, buffers = self.trainer.bound.params.clone(), self.trainer.bound.buffers.clone()
            seconds = calibrate(
                lambda steps: self._train(
                    calibration_task(self.config.training, steps), params, buffers, probe
                )
            )
            self.profile = device_profile(self.device.device, seconds)
            print(
                f"fedcore client {self.settings.client_id}: {profile_line(self.profile)}",
                flush=True,
            )
        return self.profile

    def _train(
        self, task: Task, params: torch.Tensor, buffers: torch.Tensor, data: Split
    ) -> Update:
        """Run a task on the client's device and settings (and `--slow`'s delay per step)."""
        if self.step_delay:
            time.sleep(self.step_delay * planned_steps(task, len(data)))
        with self.device.compute():
            return self.trainer.train(task, params, buffers, data, reuse_params=True)

    def _join(self, stub: pb_grpc.CoordinatorStub) -> None:
        reply = stub.Join(
            pb.JoinRequest(client_id=self.settings.client_id, profile=self.measure_profile()),
            timeout=60,
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
                reply = stub.Heartbeat(request, timeout=every * 2)
            except grpc.RpcError:
                return
            if reply.done:
                self.server_done.set()

    def _work(self, stub: pb_grpc.CoordinatorStub) -> None:
        """Ask for tasks, train and upload them, until the server says DONE."""
        data = (
            self.local_data
            if self.local_data is not None
            else self.federation.train_split(self.number)
        )
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
                self.server_done.set()
                with contextlib.suppress(grpc.RpcError):
                    # A courtesy: the server stops once every client has heard DONE, so it may
                    # be gone already.
                    stub.Leave(
                        pb.LeaveRequest(client_id=self.settings.client_id, session=self.session),
                        timeout=30,
                    )
                return
            if reply.status == pb.TaskReply.WAIT:
                continue
            params, buffers, extras = self._download(stub, reply)
            task = Task(
                client_id=self.number,
                version=reply.version,
                kind=WorkKind(reply.kind),
                local_steps=reply.local_steps,
                hyper=dict(reply.hyper),
                extras=extras,
                seed=reply.seed,
            )
            update = self._train(task, params, buffers, data)
            result = stub.UploadUpdate(self._upload(reply.task_id, update), timeout=600)
            self.accepted += int(result.accepted)
            if not result.accepted:
                print(
                    f"fedcore client {self.settings.client_id}: update refused: {result.reason}",
                    flush=True,
                )

    def _download(
        self, stub: pb_grpc.CoordinatorStub, reply: pb.TaskReply
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The task's model (params, buffers) and the extra tensors its TaskReply announced."""
        layout = self.trainer.bound.layout
        expected = {
            "params": (layout.params.numel, layout.params.dtype),
            "buffers": (layout.buffers.numel, layout.buffers.dtype),
        }
        for spec in reply.extras:
            if spec.dtype not in DTYPES:
                raise FrameError(f"task extra {spec.name!r} has unknown dtype {spec.dtype!r}")
            expected[f"extra/{spec.name}"] = (spec.numel, DTYPES[spec.dtype])
        assembler = VectorAssembler(expected, into=self._model_memory)
        request = pb.DownloadRequest(
            client_id=self.settings.client_id,
            session=self.session,
            task_id=reply.task_id,
            chunk_bytes=self.config.deployment.chunk_bytes,
        )
        for frame in stub.DownloadModel(request, timeout=600):
            assembler.add(frame)
        vectors = assembler.result()
        self._model_memory = {"params": vectors["params"], "buffers": vectors["buffers"]}
        extras = {spec.name: vectors[f"extra/{spec.name}"] for spec in reply.extras}
        return vectors["params"], vectors["buffers"], extras

    def _upload(self, task_id: str, update: Update) -> Iterator[pb.UploadChunk | bytes]:
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
        for parts in vector_frames(vectors, self.config.deployment.chunk_bytes):
            yield frame_message(UPLOAD_FRAME_FIELD, parts)
