"""`fedcore server`: the coordinator behind a gRPC service on the wall clock.

Every RPC handler is a coroutine on one asyncio loop, and so are the timers and the liveness
check, so the coordinator and the strategy run single-threaded exactly as in simulation: no
locks, no aggregation racing a timer, and no thread parked per waiting client (a long-polling
GetTask is an awaiting coroutine, not a blocked worker thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import yaml

from fedcore.certs import enrolled_clients, peer_client_id
from fedcore.proto import coordinator_pb2 as pb
from fedcore.proto import coordinator_pb2_grpc as pb_grpc
from fedcore.records import DenseDelta, Task, Update
from fedcore.rpc import DOWNLOAD_FRAME_FIELD, add_coordinator, frame_message
from fedcore.serialization import DEFAULT_CHUNK_BYTES, DTYPE_NAMES, FrameError
from fedcore.server.checkpoints import (
    CheckpointError,
    CheckpointStore,
    CheckpointWriter,
    ServerState,
)
from fedcore.server.coordinator import Coordinator, Publication
from fedcore.server.experiment import Experiment, make_experiment, parse_experiment
from fedcore.server.ledger import Ledger
from fedcore.server.reporting import RunReport, open_ledger
from fedcore.strategies.base import GlobalModel
from fedcore.typed_config import ConfigError
from fedcore.wire import VectorAssembler, vector_frames

MAX_CHUNK_BYTES = DEFAULT_CHUNK_BYTES
ALL_GONE = "all clients gone"
#: Config sections that may change between a run and its resumption.
RESUMABLE_CHANGES = frozenset({"deployment", "output"})


@dataclass
class ClientSlot:
    """What the server knows of one enrolled client."""

    number: int
    session: str = ""
    last_seen: float = 0.0
    profile: dict[str, Any] = field(default_factory=dict)
    task_id: str = ""
    task: Task | None = None
    model: GlobalModel | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    told_done: bool = False


class Refusal(Exception):
    """An RPC refused for a reason the caller must see, with its gRPC status."""

    def __init__(self, code: grpc.StatusCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class DeploymentDriver:
    """Implements the coordinator's Driver on the asyncio loop and the wall clock."""

    def __init__(self, loop: asyncio.AbstractEventLoop, clock_start: float = 0.0) -> None:
        self.loop = loop
        self.started = loop.time() - clock_start
        self.coordinator: Coordinator | None = None
        self.slots: dict[int, ClientSlot] = {}

    def now(self) -> float:
        """Seconds of serving since the run began (a resumed run continues its clock)."""
        return self.loop.time() - self.started

    def send(self, task: Task, model: GlobalModel) -> None:
        """Park the task in the client's slot and wake its long-poll."""
        slot = self.slots[task.client_id]
        slot.task_id = secrets.token_hex(16)
        slot.task, slot.model = task, model
        slot.wake.set()

    def schedule(self, at: float, key: str) -> None:
        """Fire `Coordinator.timer(key)` on the loop at server time `at`."""
        assert self.coordinator is not None
        self.loop.call_at(self.started + at, self.coordinator.timer, key)

    def client_speed(self, number: int) -> float | None:
        """Seconds per step the client measured at its join (None before it joined)."""
        slot = self.slots.get(number)
        step = slot.profile.get("step_seconds") if slot is not None else None
        return float(step) if step else None


class CoordinatorService(pb_grpc.CoordinatorServicer):
    """The gRPC face of the coordinator: authenticates every call, then feeds events in."""

    def __init__(
        self,
        coordinator: Coordinator,
        driver: DeploymentDriver,
        enrolled: list[str],
        heartbeat_seconds: float,
        spool_dir: Path | None = None,
        spool_bytes: int = 0,
    ) -> None:
        self.coordinator = coordinator
        self.spool_dir = spool_dir
        self.spool_bytes = spool_bytes
        self.driver = driver
        self.numbers = {client: number for number, client in enumerate(enrolled)}
        self.names = dict(enumerate(enrolled))
        for number in self.names:
            driver.slots[number] = ClientSlot(number)
        self.heartbeat_seconds = heartbeat_seconds
        self.bytes_down = 0
        self.bytes_up = 0
        layout = coordinator.layout
        self.spec_json = json.dumps(
            {"params": layout.params.to_json(), "buffers": layout.buffers.to_json()}
        )

    # -- authentication ------------------------------------------------------------------------
    def _identify(
        self, context: grpc.aio.ServicerContext, claimed: str, session: str | None
    ) -> ClientSlot:
        try:
            identity = peer_client_id(context.auth_context())
        except Exception:
            raise Refusal(
                grpc.StatusCode.UNAUTHENTICATED, "no client certificate identity"
            ) from None
        if identity not in self.numbers:
            raise Refusal(grpc.StatusCode.PERMISSION_DENIED, f"client {identity!r} is not enrolled")
        if claimed != identity:
            raise Refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                f"certificate belongs to {identity!r}, request claims {claimed!r}",
            )
        slot = self.driver.slots[self.numbers[identity]]
        if session is not None and session != slot.session:
            raise Refusal(grpc.StatusCode.FAILED_PRECONDITION, "unknown session: join again")
        slot.last_seen = self.driver.now()
        return slot

    async def _authenticate(
        self, context: grpc.aio.ServicerContext, claimed: str, session: str | None
    ) -> ClientSlot:
        """The caller's slot, or the RPC aborted with the refusal's status and reason."""
        try:
            return self._identify(context, claimed, session)
        except Refusal as refusal:
            await context.abort(refusal.code, str(refusal))
            raise  # context.abort has already raised; this only tells type checkers

    # -- RPCs ------------------------------------------------------------------------------------
    async def Join(
        self, request: pb.JoinRequest, context: grpc.aio.ServicerContext
    ) -> pb.JoinReply:
        """Register a (re)connecting client and make it available to the strategy."""
        slot = await self._authenticate(context, request.client_id, None)
        if slot.session and slot.number in self.coordinator.outstanding:
            self.coordinator.client_gone(slot.number)
        slot.session = secrets.token_hex(16)
        slot.task = slot.model = None
        slot.profile = {
            "architecture": request.profile.architecture,
            "device": request.profile.device_type,
            "device_name": request.profile.device_name,
            "cores": request.profile.cores,
            "memory_bytes": request.profile.memory_bytes,
            "step_seconds": request.profile.step_seconds,
            "libraries": dict(request.profile.libraries),
            "examples": request.num_examples,
        }
        self.coordinator.ledger.record(
            "join", client=slot.number, name=request.client_id, profile=slot.profile
        )
        if slot.number not in self.coordinator.outstanding:
            self.coordinator.client_idle(slot.number)
        return pb.JoinReply(
            session=slot.session,
            heartbeat_seconds=self.heartbeat_seconds,
            model_spec_json=self.spec_json,
            client_number=slot.number,
        )

    async def Heartbeat(
        self,
        request: pb.HeartbeatRequest,
        context: grpc.aio.ServicerContext,
    ) -> pb.HeartbeatReply:
        """Refresh liveness."""
        try:
            slot = self._identify(context, request.client_id, request.session)
        except Refusal as refusal:
            if refusal.code != grpc.StatusCode.FAILED_PRECONDITION:
                await context.abort(refusal.code, str(refusal))
            return pb.HeartbeatReply(known=False)
        slot.told_done = self.coordinator.finished
        return pb.HeartbeatReply(known=True, done=slot.told_done)

    async def GetTask(
        self, request: pb.TaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.TaskReply:
        """Long-poll for the client's next task (at most `wait_seconds`, capped at 30 s)."""
        slot = await self._authenticate(context, request.client_id, request.session)
        if slot.task is None and not self.coordinator.finished:
            slot.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(slot.wake.wait(), timeout=min(30.0, request.wait_seconds))
        if self.coordinator.finished and slot.task is None:
            slot.told_done = True
            return pb.TaskReply(status=pb.TaskReply.DONE)
        task = slot.task
        if task is None:
            return pb.TaskReply(status=pb.TaskReply.WAIT)
        deadline = 0.0 if task.deadline is None else max(0.0, task.deadline - self.driver.now())
        return pb.TaskReply(
            status=pb.TaskReply.TASK,
            task_id=slot.task_id,
            version=task.version,
            kind=str(task.kind),
            local_steps=task.local_steps,
            hyper=task.hyper,
            seed=task.seed,
            deadline_seconds=deadline,
            extras=[
                pb.TensorSpec(name=name, dtype=DTYPE_NAMES[tensor.dtype], numel=tensor.numel())
                for name, tensor in task.extras.items()
            ],
        )

    async def DownloadModel(
        self,
        request: pb.DownloadRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[bytes]:
        """Stream the model the client's current task starts from, in bounded chunks."""
        slot = await self._authenticate(context, request.client_id, request.session)
        model, task = slot.model, slot.task
        if model is None or task is None or request.task_id != slot.task_id:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no such task for this client")
            return
        chunk = min(MAX_CHUNK_BYTES, request.chunk_bytes or MAX_CHUNK_BYTES)
        digests = model.chunk_digests(chunk)
        frames = itertools.chain(
            vector_frames({"params": model.params, "buffers": model.buffers}, chunk, digests),
            vector_frames({f"extra/{n}": t.reshape(-1) for n, t in task.extras.items()}, chunk),
        )
        for parts in frames:
            message = frame_message(DOWNLOAD_FRAME_FIELD, parts)
            self.bytes_down += len(message)
            yield message

    async def UploadUpdate(
        self,
        request_iterator: AsyncIterator[pb.UploadHeader | memoryview],
        context: grpc.aio.ServicerContext,
    ) -> pb.UploadReply:
        """Reassemble, validate and deliver one update; refusals name their reason."""
        try:
            header = await anext(aiter(request_iterator), None)
        except FrameError as error:
            header = None
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed upload: {error}")
        if not isinstance(header, pb.UploadHeader):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "upload must start with its header"
            )
            raise AssertionError
        try:
            slot = self._identify(context, header.client_id, header.session)
            if slot.task is None or header.task_id != slot.task_id:
                raise Refusal(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "upload names no outstanding task of this client (replayed or stale)",
                )
        except Refusal as refusal:
            self.coordinator.ledger.record("refused", client=header.client_id, reason=str(refusal))
            await context.abort(refusal.code, str(refusal))
            raise  # context.abort has already raised; this only tells type checkers
        task = slot.task
        slot.task_id, slot.task, slot.model = "", None, None
        layout = self.coordinator.layout
        assembler = VectorAssembler(
            {
                "delta": (layout.params.numel, layout.params.dtype),
                "buffers": (layout.buffers.numel, layout.buffers.dtype),
            },
            self.spool_dir,
            self.spool_bytes,
        )
        try:
            async for part in request_iterator:
                if not isinstance(part, memoryview):
                    raise FrameError("a second header inside one upload")
                self.bytes_up += len(part)
                assembler.add(part)
            vectors = assembler.result()
        except FrameError as error:
            assembler.discard()
            reason = f"malformed upload: {error}"
            self.coordinator.refuse(task, reason)
            self._return(slot)
            return pb.UploadReply(accepted=False, reason=reason)
        update = Update(
            client_id=slot.number,
            base_version=header.base_version,
            num_examples=header.num_examples,
            payload=DenseDelta(vectors["delta"]),
            buffers=vectors["buffers"],
            local_steps=header.local_steps,
            compute_seconds=header.compute_seconds,
            wall_seconds=header.wall_seconds,
            metrics=dict(header.metrics),
        )
        reason = self.coordinator.receive(update)
        self._return(slot)
        return pb.UploadReply(accepted=reason is None, reason=reason or "")

    async def Leave(
        self, request: pb.LeaveRequest, context: grpc.aio.ServicerContext
    ) -> pb.LeaveReply:
        """A client says goodbye; its outstanding task, if any, is lost."""
        slot = await self._authenticate(context, request.client_id, request.session)
        slot.session = ""
        self.coordinator.client_gone(slot.number)
        return pb.LeaveReply()

    # -- registry --------------------------------------------------------------------------------
    def registry(self) -> dict[str, Any]:
        """The enrolled clients in number order and the last profile each joined with."""
        return {
            "clients": [self.names[n] for n in sorted(self.names)],
            "profiles": {
                self.names[n]: s.profile for n, s in self.driver.slots.items() if s.profile
            },
        }

    def restore_registry(self, registry: dict[str, Any]) -> None:
        """Take back the profiles of a checkpoint taken with the same enrolment."""
        enrolled = [self.names[n] for n in sorted(self.names)]
        if registry.get("clients") != enrolled:
            raise ConfigError(
                f"deployment.certs: the enrolled clients changed since the checkpoint "
                f"({registry.get('clients')} then, {enrolled} now); client numbers would not "
                "match their data partitions"
            )
        for name, profile in registry.get("profiles", {}).items():
            self.driver.slots[self.numbers[name]].profile = profile

    def connected(self) -> int:
        """Clients with a live session."""
        return sum(1 for slot in self.driver.slots.values() if slot.session)

    # -- helpers -------------------------------------------------------------------------------
    def _return(self, slot: ClientSlot) -> None:
        if slot.session and slot.number not in self.coordinator.outstanding:
            self.coordinator.client_idle(slot.number)

    async def watch_liveness(self, timeout: float) -> None:
        """Declare clients gone when their heartbeats stop."""
        while True:
            await asyncio.sleep(min(1.0, timeout / 3))
            now = self.driver.now()
            for slot in self.driver.slots.values():
                if slot.session and now - slot.last_seen > timeout:
                    slot.session = ""
                    slot.task = slot.model = None
                    self.coordinator.client_gone(slot.number)
                    log(
                        f"client {self.names[slot.number]} gone (no heartbeat for {timeout:g} s); "
                        f"{self.connected()} of {len(self.names)} connected"
                    )


def server_credentials(cert_dir: Path) -> grpc.ServerCredentials:
    """Mutual TLS: the server's certificate, and client certificates required from our CA."""
    return grpc.ssl_server_credentials(
        [((cert_dir / "server.key").read_bytes(), (cert_dir / "server.pem").read_bytes())],
        root_certificates=(cert_dir / "ca.pem").read_bytes(),
        require_client_auth=True,
    )


def log(message: str) -> None:
    """One line for the operator, on stderr (stdout carries the progress display)."""
    print(f"fedcore server: {message}", file=sys.stderr, flush=True)


async def serve(
    service: CoordinatorService,
    cert_dir: Path,
    address: str,
    *,
    liveness_timeout: float,
    gone_timeout: float,
    ready: Callable[[int], None],
) -> str:
    """Run the service until training finishes (and clients are told DONE), SIGTERM/SIGINT, or
    every client has been gone for `gone_timeout` seconds; return why it stopped."""
    coordinator, driver = service.coordinator, service.driver
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 4 << 20)])
    add_coordinator(service, server)
    port = server.add_secure_port(address, server_credentials(cert_dir))
    stop = asyncio.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        driver.loop.add_signal_handler(signal_number, stop.set)
    await server.start()
    ready(port)
    watcher = asyncio.ensure_future(service.watch_liveness(liveness_timeout))
    coordinator.start()
    reason = f"reached {coordinator.max_versions} model versions"
    gone_since: float | None = None
    joined = False
    try:
        while not coordinator.finished and not stop.is_set():
            await asyncio.sleep(0.05)
            if coordinator.finished:
                break
            if service.connected():
                joined, gone_since = True, None
            elif joined and gone_since is None:
                gone_since = time.monotonic()
                wait = f"up to {gone_timeout:g} s" if gone_timeout else "indefinitely"
                log(f"all clients gone; waiting {wait} for one to rejoin")
            elif (
                gone_since is not None
                and gone_timeout
                and (time.monotonic() - gone_since > gone_timeout)
            ):
                reason = (
                    f"{ALL_GONE}: no client connected for {gone_timeout:g} s "
                    f"(at model version {coordinator.model.version} of {coordinator.max_versions})"
                )
                break
        if stop.is_set():
            reason = "stopped by signal"
        for slot in driver.slots.values():
            slot.wake.set()
        if coordinator.finished:
            # Stay up until every connected client has heard that training is over (a GetTask
            # DONE or a heartbeat saying so); one that says nothing for the liveness timeout
            # is gone anyway.
            grace = time.monotonic() + liveness_timeout
            while time.monotonic() < grace and any(
                s.session and not s.told_done for s in driver.slots.values()
            ):
                await asyncio.sleep(0.05)
    finally:
        watcher.cancel()
        await server.stop(grace=1.0)
    return reason


def resume_state(
    experiment: Experiment,
    config_data: dict[str, Any],
    run_path: Path | None,
    ledger: Ledger,
) -> ServerState | None:
    """What an existing run directory says to continue from: its newest good checkpoint (None:
    start from the initial model). Voids ledger entries written after that checkpoint."""
    if run_path is None or not (run_path / "config.yaml").exists():
        return None
    saved = yaml.safe_load((run_path / "config.yaml").read_text())
    differing = sorted(
        key
        for key in set(saved) | set(config_data)
        if key not in RESUMABLE_CHANGES and saved.get(key) != config_data.get(key)
    )
    if differing:
        raise ConfigError(
            f"{differing[0]}: differs from the experiment in run directory {run_path}; resume "
            "with the same config or start a new run directory"
        )
    deployment = experiment.config.deployment
    store = CheckpointStore(run_path / "checkpoints", deployment.checkpoint_keep)

    def ledger_reaches(state: ServerState) -> None:
        if ledger.size() < state.ledger_position:
            raise CheckpointError(
                f"ledger.jsonl has {ledger.size()} bytes, the checkpoint expects "
                f"{state.ledger_position}"
            )

    try:
        state = store.load_latest(experiment.layout, log, ledger_reaches)
    except CheckpointError as error:
        raise ConfigError(f"hydra.run.dir: {error}") from None
    version = state.model.version if state else 0
    voided = ledger.resume(state.ledger_position if state else 0, version)
    log(
        f"resuming {run_path} from model version {version}"
        + (f" ({voided} ledger entries after that checkpoint voided)" if voided else "")
    )
    return state


def deploy(
    config_data: dict[str, Any], run_path: Path | None, ready: Callable[[int], None]
) -> dict[str, Any]:
    """Run `fedcore server` for the experiment `config_data` describes, resuming from the run
    directory's checkpoints when it has some; return the summary."""
    experiment_config, _ = parse_experiment(config_data)
    config = experiment_config.deployment
    cert_dir = Path(config.certs)
    names = enrolled_clients(cert_dir)
    if len(names) != experiment_config.num_clients:
        raise ConfigError(
            f"num_clients: must equal the {len(names)} clients enrolled in "
            f"{cert_dir / 'enrolled.txt'}, got {experiment_config.num_clients}"
        )
    experiment = make_experiment(config_data)
    ledger = open_ledger(experiment, run_path)
    state = resume_state(experiment, config_data, run_path, ledger)
    writer = (
        CheckpointWriter(CheckpointStore(run_path / "checkpoints", config.checkpoint_keep), log)
        if run_path is not None and config.checkpoint_every
        else None
    )

    async def main() -> dict[str, Any]:
        driver = DeploymentDriver(asyncio.get_running_loop(), state.time if state else 0.0)
        coordinator = Coordinator(
            experiment.strategy,
            experiment.layout,
            experiment.initial_model() if state is None else state.model,
            driver,
            max_versions=experiment.config.rounds,
            ledger=ledger,
            policy=experiment.config.validation,
            hash_models=True,
            client_speed=driver.client_speed,
        )
        driver.coordinator = coordinator
        spool_dir = (run_path or Path(tempfile.gettempdir())) / "spool"
        spool_dir.mkdir(parents=True, exist_ok=True)
        service = CoordinatorService(
            coordinator, driver, names, config.heartbeat_seconds, spool_dir, config.spool_bytes
        )
        if state is not None:
            service.restore_registry(state.registry)
            coordinator.restore(state.model, state.strategy, state.timers)
        report = RunReport(
            experiment,
            config_data,
            run_path,
            lambda: (service.bytes_down, service.bytes_up),
            resume_version=state.model.version if state else None,
        )
        coordinator.listeners.append(report.record)

        def checkpoint(publication: Publication) -> None:
            version = publication.model.version
            if writer is None or (version % config.checkpoint_every and not coordinator.finished):
                return
            writer.submit(
                ServerState(
                    model=publication.model,
                    time=publication.time,
                    strategy=coordinator.strategy.state_dict(),
                    timers=coordinator.pending_timers(),
                    registry=service.registry(),
                    ledger_position=ledger.position(),
                )
            )

        coordinator.listeners.append(checkpoint)
        try:
            with report:
                reason = await serve(
                    service,
                    cert_dir,
                    config.address,
                    liveness_timeout=config.liveness_timeout,
                    gone_timeout=config.gone_timeout,
                    ready=ready,
                )
        finally:
            if writer is not None:
                writer.drain()
        ledger.close()
        return report.finish(
            coordinator.model,
            ledger,
            stop_reason=reason,
            complete=coordinator.finished,
            seconds=driver.now(),
        )

    return asyncio.run(main())
