"""`fedcore server`: the wiring of a deployed run. The coordinator runs behind the gRPC service
(`server/service.py`) on the wall clock, over the registry of enrolled clients
(`server/registry.py`); this module builds them, resumes from checkpoints, and serves until
training is over, a signal, or every client has been gone too long, waking on events rather
than polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import yaml

from fedcore.certs import CA_KEY, CLIENTS_DIR, enrolled_clients, server_dir
from fedcore.records import Task
from fedcore.rpc import add_coordinator
from fedcore.server.checkpoints import (
    CheckpointError,
    CheckpointStore,
    CheckpointWriter,
    ServerState,
)
from fedcore.server.coordinator import Coordinator, FederatedEvaluation, Publication
from fedcore.server.disk import DiskFault
from fedcore.server.experiment import Experiment, make_experiment, parse_experiment
from fedcore.server.ledger import Ledger, read_ledger
from fedcore.server.privacy_accounting import privacy_accountant
from fedcore.server.registry import Parked, Registry, log
from fedcore.server.reporting import RunReport, open_ledger
from fedcore.server.service import CoordinatorService
from fedcore.strategies.base import GlobalModel
from fedcore.typed_config import ConfigError

ALL_GONE = "all clients gone"
#: Concurrent RPCs on one connection (a client uses a heartbeat, a long-poll and one transfer).
MAX_STREAMS_PER_CONNECTION = 16
#: File descriptors kept back from connections for the server's own files (ledger, run
#: directory, checkpoints, spool, data).
RESERVED_FILES = 256


def connection_limit() -> int:
    """Raise this process's open-file limit to its hard limit (the usual soft limit, 1,024, is
    filled by that many idle connections) and return how many connections may be open at once,
    so that accepting them can never starve the server of descriptors for its own files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        soft = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return max(16, soft - RESERVED_FILES)


#: Config sections that may change between a run and its resumption.
RESUMABLE_CHANGES = frozenset({"deployment", "output"})


class DeploymentDriver:
    """Implements the coordinator's Driver on the asyncio loop and the wall clock: a task is
    parked in its client's slot until the client fetches it."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        registry: Registry,
        task_timeout: float,
        partition_sizes: list[int],
        clock_start: float = 0.0,
    ) -> None:
        self.loop = loop
        self.registry = registry
        self.partition_sizes = partition_sizes
        self.task_timeout = task_timeout
        self.started = loop.time() - clock_start
        self.coordinator: Coordinator | None = None

    def now(self) -> float:
        """Seconds of serving since the run began (a resumed run continues its clock)."""
        return self.loop.time() - self.started

    def send(self, task: Task, model: GlobalModel) -> None:
        """Park the task in the client's slot, wake its long-poll, and expire the task if it is
        not done within `deployment.task_timeout`, whether or not the client heartbeats."""
        slot = self.registry.slots[task.client_id]
        parked = Parked(task, model)
        parked.expiry = self.loop.call_later(self.task_timeout, self._expire, parked)
        if task.technique == "evaluate":
            slot.evaluation = parked
        else:
            slot.training = parked
        slot.wake.set()

    def _expire(self, parked: Parked) -> None:
        """A task's deadline passed before its client uploaded for it: it is lost."""
        assert self.coordinator is not None
        slot = self.registry.slots[parked.task.client_id]
        slot.take(parked)
        reason = f"not done within deployment.task_timeout ({self.task_timeout:g} s)"
        if parked.task.technique == "evaluate":
            self.coordinator.evaluation_lost(parked.task)
        else:
            self.coordinator.task_lost(parked.task, reason)

    def schedule(self, at: float, key: str) -> None:
        """Fire `Coordinator.timer(key)` on the loop at server time `at`."""
        assert self.coordinator is not None
        self.loop.call_at(self.started + at, self.coordinator.timer, key)

    def client_speed(self, number: int) -> float | None:
        """Seconds per step the client measured at its join (None before it joined)."""
        slot = self.registry.slots.get(number)
        step = slot.profile.get("step_seconds") if slot is not None else None
        return float(step) if step else None

    def declared_examples(self, number: int) -> int:
        """The examples a client trains on: the count it declared at join when it brings its
        own data, else its partition's size."""
        slot = self.registry.slots.get(number)
        claimed = int(slot.profile.get("examples", 0)) if slot is not None else 0
        return claimed or self.partition_sizes[number]

    def connected_clients(self) -> list[int]:
        """Clients with a live session: those federated evaluation may ask."""
        return [n for n, slot in sorted(self.registry.slots.items()) if slot.session]


def server_credentials(cert_dir: Path) -> grpc.ServerCredentials:
    """Mutual TLS: the server's certificate, and client certificates required from our CA."""
    return grpc.ssl_server_credentials(
        [((cert_dir / "server.key").read_bytes(), (cert_dir / "server.pem").read_bytes())],
        root_certificates=(cert_dir / "ca.pem").read_bytes(),
        require_client_auth=True,
    )


async def serve(
    service: CoordinatorService,
    cert_dir: Path,
    address: str,
    *,
    liveness_timeout: float,
    gone_timeout: float,
    handshake_timeout: float,
    ready: Callable[[int], None],
    stop: asyncio.Event,
) -> str:
    """Run the service until training finishes (clients evaluating the last model have replied
    and every connected client has been told DONE), SIGTERM/SIGINT or `stop`, or every client
    has been gone for `gone_timeout` seconds; return why it stopped."""
    coordinator, registry = service.coordinator, service.registry
    loop = asyncio.get_running_loop()
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 4 << 20),
            ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
            ("grpc.max_allowed_incoming_connections", connection_limit()),
            ("grpc.server_handshake_timeout_ms", int(handshake_timeout * 1000)),
        ]
    )
    add_coordinator(service, server)
    try:
        port = server.add_secure_port(address, server_credentials(cert_dir))
    except RuntimeError as error:
        raise ConfigError(
            f"deployment.address: cannot listen on {address} (in use?): {error}"
        ) from None
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    wake = registry.changed
    coordinator.listeners.append(lambda _: wake.set())
    coordinator.evaluation_listeners.append(lambda *_: wake.set())
    stop_waiter = asyncio.ensure_future(stop.wait())
    stop_waiter.add_done_callback(lambda _: wake.set())
    await server.start()
    ready(port)

    def revoked(number: int) -> None:
        coordinator.ledger.record("revoked", client=number, name=registry.names[number])
        coordinator.client_gone(number)

    watcher = asyncio.ensure_future(
        registry.watch_liveness(liveness_timeout, service.now, coordinator.client_gone, revoked)
    )
    coordinator.start()
    reason = ""
    gone_since: float | None = None
    joined = False
    try:
        while not coordinator.finished and not stop.is_set():
            wake.clear()
            if registry.connected():
                joined, gone_since = True, None
            elif joined and gone_since is None:
                gone_since = loop.time()
                wait = f"up to {gone_timeout:g} s" if gone_timeout else "indefinitely"
                log(f"all clients gone; waiting {wait} for one to rejoin")
            if gone_since is not None and gone_timeout:
                left = gone_since + gone_timeout - loop.time()
                if left <= 0:
                    reason = (
                        f"{ALL_GONE}: no client connected for {gone_timeout:g} s "
                        f"(at model version {coordinator.model.version} of "
                        f"{coordinator.max_versions})"
                    )
                    break
                await _wait(wake, left)
            else:
                await wake.wait()
        if stop.is_set():
            reason = "stopped"
        elif coordinator.finished:
            reason = coordinator.stop_reason
        if coordinator.finished:
            await _finish_talking(service, liveness_timeout, stop)
    finally:
        stop_waiter.cancel()
        watcher.cancel()
        await server.stop(grace=1.0)
    return reason


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Wait for `event`, at most `seconds`."""
    try:
        await asyncio.wait_for(event.wait(), timeout=seconds)
    except TimeoutError:
        return


async def _finish_talking(service: CoordinatorService, timeout: float, stop: asyncio.Event) -> None:
    """After the last model: stay up until clients evaluating it have replied and every
    connected client has heard that training is over (a GetTask DONE or a heartbeat); one that
    says nothing for the liveness timeout is gone anyway."""
    registry, coordinator = service.registry, service.coordinator
    for slot in registry.slots.values():
        slot.wake.set()
    loop = asyncio.get_running_loop()
    grace = loop.time() + timeout
    while (
        not stop.is_set()
        and loop.time() < grace
        and (
            coordinator.pending_evaluations()
            or any(s.session and not s.told_done for s in registry.slots.values())
        )
    ):
        registry.changed.clear()
        await _wait(registry.changed, grace - loop.time())


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
    config_data: dict[str, Any],
    run_path: Path | None,
    ready: Callable[[int], None],
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Run `fedcore server` for the experiment `config_data` describes (composed from
    `overrides`), resuming from the run directory's checkpoints when it has some; return the
    summary."""
    experiment_config, _ = parse_experiment(config_data)
    config = experiment_config.deployment
    cert_dir = Path(config.certs)
    if (cert_dir / CA_KEY).exists() or any(cert_dir.glob(f"{CLIENTS_DIR}/*.key")):
        raise ConfigError(
            f"deployment.certs: {cert_dir} holds the CA's or clients' private keys, which the "
            f"server does not need; give it the server's folder: "
            f"deployment.certs={server_dir(cert_dir)}"
        )
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
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        faults: list[DiskFault] = []

        def disk_fault(fault: DiskFault) -> None:
            """A lasting write fault (heard on any thread): the run stops."""

            def halt() -> None:
                faults.append(fault)
                stop.set()

            loop.call_soon_threadsafe(halt)

        ledger.on_fault(disk_fault)
        if writer is not None:
            writer.on_fault = disk_fault
        registry = Registry(names, cert_dir)
        registry.refresh_revocations()
        driver = DeploymentDriver(
            asyncio.get_running_loop(),
            registry,
            config.task_timeout,
            [len(part) for part in experiment.federation.train_parts],
            state.time if state else 0.0,
        )
        evaluation = experiment.config.evaluation
        spool_dir = (run_path or Path(tempfile.gettempdir())) / "spool"
        spool_dir.mkdir(parents=True, exist_ok=True)
        coordinator = Coordinator(
            experiment.strategy,
            experiment.layout,
            experiment.initial_model() if state is None else state.model,
            driver,
            max_versions=experiment.config.rounds,
            num_clients=len(names),
            ledger=ledger,
            policy=experiment.config.validation,
            hash_models=True,
            client_speed=driver.client_speed,
            evaluation=FederatedEvaluation.of(
                evaluation, experiment.config.rounds, experiment.config.seed
            ),
            evaluation_candidates=driver.connected_clients,
            spool_dir=spool_dir,
            declared_examples=driver.declared_examples,
            keep_in_memory_bytes=config.memory_uploads
            * (experiment.layout.params.nbytes + experiment.layout.buffers.nbytes),
            privacy=privacy_accountant(experiment.config),
            min_trainable=experiment.config.clients_per_round,
        )
        driver.coordinator = coordinator
        service = CoordinatorService(
            coordinator,
            registry,
            driver.now,
            config.heartbeat_seconds,
            spool_dir,
            config.spool_bytes,
            config.upload_timeout,
            config.memory_uploads,
        )
        if state is not None:
            service.bytes_down, service.bytes_up = state.traffic
            registry.restore(state.registry)
            coordinator.restore(state.model, state.strategy, state.timers)
        if coordinator.privacy is not None and ledger.path is not None and ledger.path.exists():
            coordinator.privacy.rebuild(read_ledger(ledger.path))
        report = RunReport(
            experiment,
            config_data,
            run_path,
            lambda: {
                "bytes_down": service.bytes_down,
                "bytes_up": service.bytes_up,
                "refused": ledger.counts["refused"],
            },
            resume_version=state.model.version if state else None,
            overrides=overrides,
            stop=coordinator.stop,
            clock="wall",
        )
        if report.run_dir is not None:
            report.run_dir.on_fault(disk_fault)
        report.follow(coordinator)

        def checkpoint(publication: Publication) -> None:
            version = publication.model.version
            if (
                writer is None
                or faults
                or (version % config.checkpoint_every and not coordinator.finished)
            ):
                return
            writer.submit(
                ServerState(
                    model=publication.model,
                    time=publication.time,
                    strategy=coordinator.strategy.state_dict(),
                    timers=coordinator.pending_timers(),
                    registry=registry.to_state(),
                    ledger_position=ledger.position(),
                    traffic=(service.bytes_down, service.bytes_up),
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
                    handshake_timeout=config.handshake_timeout,
                    ready=ready,
                    stop=stop,
                )
        finally:
            if writer is not None:
                try:
                    writer.drain()
                except DiskFault as fault:
                    faults.append(fault)
        ledger.close()
        if faults:
            reason = f"stopped on a disk fault: {faults[0]}"
        try:
            summary = report.finish(
                coordinator.model,
                ledger,
                stop_reason=reason,
                complete=coordinator.finished,
                seconds=driver.now(),
            )
        except OSError as error:
            if not faults:
                raise
            faults.append(DiskFault(f"the final model and summary: {error}"))
        if faults:
            version = coordinator.model.version
            left = "" if len(faults) == 1 else f"; not written either: {faults[-1]}"
            raise DiskFault(
                f"{faults[0]} (at model version {version}{left}); once the disk takes writes "
                "again, start the server with the same command to resume from its last checkpoint"
            )
        return summary

    return asyncio.run(main())
