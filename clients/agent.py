"""`fedcore client`: a deployed client process.

It joins with its device profile, long-polls for tasks (saying which model version it holds,
so that version is not sent again), downloads what the task starts from as chunked frames, runs
the task's client technique and transforms with the same LocalTrainer the simulation uses
(evaluation on its hold-out: its partition's, or a share of its `--data`), uploads the result as
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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import torch

from fedcore.clients.device import ClientDevice
from fedcore.clients.local_data import load_local_data
from fedcore.clients.profile import calibrate, calibration_task, device_profile, profile_line
from fedcore.clients.techniques import technique_type
from fedcore.clients.trainer import LocalTrainer
from fedcore.config import ExperimentConfig
from fedcore.data import Split, holdout_split
from fedcore.federation import make_federation, model_builder
from fedcore.memory import peak_rss_bytes
from fedcore.messages import download_layout, received_task, update_vectors, upload_header
from fedcore.proto import coordinator_pb2 as pb
from fedcore.proto import coordinator_pb2_grpc as pb_grpc
from fedcore.records import Task, Update
from fedcore.rpc import UPLOAD_FRAME_FIELD, coordinator_stub, frame_message
from fedcore.state_files import StateFileError, load_state, save_state
from fedcore.wire import VectorAssembler, vector_frames

FATAL_CODES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
TLS_FAILURE_WORDS = ("handshake", "ssl", "certificate", "tls", "verification")
#: Characters of gRPC's explanation a retry line quotes.
CAUSE_CHARS = 160


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
    #: Seconds of failing to reach the server after which the client gives up (0: never).
    give_up: float = 600.0


#: What stands for a held model a download replaces (it is never read).
NO_TENSOR = torch.empty(0)


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
        state: Path | None = None,
        own_transforms: Mapping[str, Mapping[str, float]] | None = None,
    ) -> None:
        """`state` names the file that keeps the techniques' client state across restarts;
        `own_transforms` are this client's own transform settings (its local DP floor)."""
        self.settings = settings
        self.config = config
        self.step_delay = step_delay
        self.device = device or ClientDevice(torch.device("cpu"), config.client_devices.cpu)
        self.federation = make_federation(config)
        self.local_data = (
            local_splits(load_local_data(data, self.federation.dataset), config) if data else None
        )
        #: Peak RSS before the model exists: the interpreter, the libraries and the data.
        self.rss_before_model = peak_rss_bytes()
        self.trainer = LocalTrainer(
            model_builder(config, self.federation.dataset),
            device=self.device.device,
            own_transforms=own_transforms,
        )
        self.state_path = state
        if state is not None and state.exists():
            try:
                self.trainer.load_state_dict(load_state(state))
            except StateFileError as error:
                raise ClientFatal(f"--state: {error}") from None
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
        #: Federated evaluations the server accepted.
        self.evaluations = 0
        #: The last downloaded model's tensors, refilled by the next download (tasks run one at
        #: a time), and the version they hold while a task has not overwritten them.
        self._model_memory: dict[str, torch.Tensor] = {}
        self._held_version: int | None = None

    def run(self) -> int:
        """Work until DONE; return the number of updates the server accepted."""
        settings = self.settings
        backoff = 1.0
        failing_since: float | None = None
        while True:
            channel = channel_for(settings)
            try:
                stub = coordinator_stub(channel)
                self._join(stub)
                backoff, failing_since = 1.0, None
                self._work(stub)
                return self.accepted
            except grpc.RpcError as error:
                self._raise_if_fatal(error)
                if self.server_done.is_set():
                    print(
                        f"fedcore client {settings.client_id}: the server finished training "
                        "while this client was working; its last update is not needed",
                        flush=True,
                    )
                    return self.accepted
                now = time.monotonic()
                failing_since = now if failing_since is None else failing_since
                cause = _cause(error)
                if settings.give_up and now - failing_since >= settings.give_up:
                    raise ClientFatal(
                        f"gave up: the server at {settings.address} was unreachable for "
                        f"{now - failing_since:.0f} s ({cause}); --give-up sets how long to try"
                    ) from None
                delay = min(settings.max_backoff, backoff) * random.uniform(0.5, 1.0)
                print(
                    f"fedcore client {settings.client_id}: server {settings.address} "
                    f"unavailable ({cause}); retrying in {delay:.1f} s",
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
        if self.connected_once or not any(word in details for word in TLS_FAILURE_WORDS):
            return
        settings = self.settings
        if "hostname" in details:
            expected = settings.server_name or settings.address.rpartition(":")[0]
            raise ClientFatal(
                f"TLS failure at {settings.address}: the server's certificate is not for "
                f"{expected!r}; pass the name it was made for (fedcore certs init "
                "--server-name) as --server-name"
            ) from None
        raise ClientFatal(
            f"TLS failure at {settings.address} (certificate or server name): {_cause(error)}"
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
        """Run a task on the client's device and settings (and `--slow`'s delay per pass).
        The task may overwrite `params` (the download buffer), which then holds no model."""
        if self.step_delay:
            time.sleep(self.step_delay * self.trainer.passes(task, len(data)))
        reuse = technique_type(task.technique).data == "train"
        if reuse:
            self._held_version = None
        with self.device.compute():
            return self.trainer.run(task, params, buffers, data, reuse_params=reuse)

    def _data(self, task: Task) -> Split:
        """The data the task's technique works on: training examples or the hold-out."""
        holdout = technique_type(task.technique).data == "holdout"
        if self.local_data is not None:
            return self.local_data[1 if holdout else 0]
        split = self.federation.holdout_split if holdout else self.federation.train_split
        return split(self.number)

    def _join(self, stub: pb_grpc.CoordinatorStub) -> None:
        reply = stub.Join(
            pb.JoinRequest(
                client_id=self.settings.client_id,
                profile=self.measure_profile(),
                num_examples=0 if self.local_data is None else len(self.local_data[0]),
            ),
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
        while True:
            held = self._held_version
            reply = stub.GetTask(
                pb.TaskRequest(
                    client_id=self.settings.client_id,
                    session=self.session,
                    wait_seconds=self.settings.poll_seconds,
                    holds_model=held is not None,
                    held_version=held or 0,
                ),
                timeout=self.settings.poll_seconds + 30,
            )
            if reply.status == pb.TaskReply.DONE:
                if reply.reason:  # the server's words, shown at most 500 characters long
                    print(f"client {self.settings.client_id}: {reply.reason[:500]}", flush=True)
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
            started = time.monotonic()
            task, params, buffers = self._download(stub, reply)
            update = self._train(task, params, buffers, self._data(task))
            self._save_state()
            result = stub.UploadUpdate(self._upload(reply.task_id, update), timeout=600)
            if update.payload is None:
                self.evaluations += int(result.accepted)
            else:
                self.accepted += int(result.accepted)
            print(task_line(self.settings.client_id, task, update, result, started), flush=True)

    def _save_state(self) -> None:
        """Keep the techniques' state on disk before the update leaves, so a client that
        restarts after the server counted the update still holds what that implies."""
        state = self.trainer.state_dict()
        if self.state_path is not None and state:
            save_state(self.state_path, state)

    def _download(
        self, stub: pb_grpc.CoordinatorStub, reply: pb.TaskReply
    ) -> tuple[Task, torch.Tensor, torch.Tensor]:
        """The task a TaskReply announces, with the model it starts from (downloaded into the
        last model's memory, or the held model when the server sent none)."""
        layout = self.trainer.bound.layout
        assembler = VectorAssembler(download_layout(reply, layout), into=self._model_memory)
        request = pb.DownloadRequest(
            client_id=self.settings.client_id,
            session=self.session,
            task_id=reply.task_id,
            chunk_bytes=self.config.deployment.chunk_bytes,
        )
        for frame in stub.DownloadModel(request, timeout=600):
            assembler.add(frame)
        vectors = assembler.result()
        memory = self._model_memory
        if reply.download in ("full", "masked") or "params" in memory:
            held = (memory.get("params", NO_TENSOR), memory.get("buffers", NO_TENSOR))
        else:  # a task that needs no model, before any was downloaded
            held = (layout.params.empty().zero_(), layout.buffers.empty().zero_())
        task, params, buffers = received_task(reply, self.number, vectors, layout, held)
        if reply.download == "full":
            self._model_memory = {"params": params, "buffers": buffers}
            self._held_version = task.version
        return task, params, buffers

    def _upload(self, task_id: str, update: Update) -> Iterator[pb.UploadChunk | bytes]:
        yield pb.UploadChunk(
            header=upload_header(update, self.settings.client_id, self.session, task_id)
        )
        for parts in vector_frames(update_vectors(update), self.config.deployment.chunk_bytes):
            yield frame_message(UPLOAD_FRAME_FIELD, parts)


def task_line(
    client_id: str, task: Task, update: Update, result: pb.UploadReply, started: float
) -> str:
    """The line a client prints per task: what it did, how long it took, what it sent, and
    whether the server counted it."""
    metrics = update.metrics
    if update.payload is None:
        accuracy = metrics.get("eval_accuracy", float("nan"))
        what = f"evaluated version {task.version} (accuracy {accuracy:.4f})"
    else:
        loss = metrics.get("train_loss", float("nan"))
        what = f"trained from version {task.version}: {update.local_steps} steps, loss {loss:.4g}"
    verdict = "accepted" if result.accepted else f"refused: {result.reason}"
    return (
        f"fedcore client {client_id}: {what}; {time.monotonic() - started:.1f} s, "
        f"{update.nbytes / 1e3:,.0f} kB up; {verdict}"
    )


def _cause(error: grpc.RpcError) -> str:
    """gRPC's reason for a failed call, without its preamble (`failed to connect to all
    addresses; last error: UNKNOWN: ipv4:...: Connection refused` says `Connection refused`)."""
    details = (error.details() or error.code().name).strip().rstrip("]")
    return details.rpartition(": ")[2][:CAUSE_CHARS] or error.code().name


def local_splits(data: Split, config: ExperimentConfig) -> tuple[Split, Split]:
    """A client's own data as (training examples, evaluation hold-out): the partition's hold-out
    fraction, drawn from the run's seed as the shared partitions' are."""
    train, held = holdout_split(
        [np.arange(len(data))], config.partition.holdout, seed=config.seed + 1
    )
    return data.subset(torch.from_numpy(train[0])), data.subset(torch.from_numpy(held[0]))
