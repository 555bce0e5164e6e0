"""Discrete-event simulation: virtual clients on a virtual clock, driving the real coordinator.

A dispatched task finishes its local work at now + download + passes x seconds-per-step, from
the client's device profile (seconds-per-step as of dispatch, after any scheduled slowdown), and
arrives after uploading the bytes its payload really has; the download charges the bytes really
sent (nothing for a version the client already holds, a masked sub-model's mask and values). A
client in a scheduled outage becomes idle only when it ends. Local work really runs, in-process
when its work-done event is reached or ahead of time in a pool of worker processes (`fork`ed
from this one when it runs torch on one thread, so they share its loaded data; `spawn`ed
otherwise). Federated evaluation tasks run beside training, in the pool too: they charge
neither time nor bytes, and their replies reach the coordinator in the order they were sent,
at the end of the event that sent them, so turning evaluation up or down never changes a run's
training and the worker count never changes a result. Clients exist only as ids until they
train, so memory follows the clients in flight.
"""

from __future__ import annotations

import heapq
import itertools
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from enum import IntEnum
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from fedcore.clients.techniques import technique_type
from fedcore.clients.trainer import LocalTrainer, keyed_by_run
from fedcore.config import ExperimentConfig
from fedcore.data.split import Split
from fedcore.federation import Federation, make_federation, model_builder
from fedcore.profiles import ProfileSampler
from fedcore.records import MASK, Task, Update
from fedcore.server.coordinator import Coordinator, FederatedEvaluation, Publication
from fedcore.server.evaluation import evaluation_sample
from fedcore.server.experiment import (
    Experiment,
    make_experiment,
    parse_experiment,
)
from fedcore.server.ledger import Ledger
from fedcore.server.privacy_accounting import keyed_noise, privacy_accountant
from fedcore.server.reporting import RunReport, open_ledger
from fedcore.strategies.base import GlobalModel
from fedcore.typed_config import ConfigError

#: How the stop reason of a run ended by Ctrl-C begins.
INTERRUPTED = "interrupted"


class EventKind(IntEnum):
    """Simulation events; at equal times they are handled in this order."""

    TIMER = 0
    ARRIVAL = 1
    LOST = 2
    IDLE = 3
    OUTAGE = 4
    WORKED = 5


@dataclass(order=True)
class Event:
    """A heap entry: time first, then kind and a sequence number for a total, seeded order."""

    time: float
    kind: EventKind
    seq: int
    client: int = field(compare=False, default=-1)
    key: str = field(compare=False, default="")


@dataclass
class InFlight:
    """A task on its way: the model it started from, and its result when computed ahead."""

    task: Task
    model: GlobalModel
    result: Future[Update] | None = None
    update: Update | None = None


@dataclass
class SimulationResult:
    """How a simulation ended."""

    final: GlobalModel
    virtual_seconds: float
    stop_reason: str
    bytes_down: int
    bytes_up: int


class Simulation:
    """Runs one experiment to its end on a virtual clock (implements the coordinator's Driver)."""

    def __init__(
        self,
        experiment: Experiment,
        config_data: dict[str, Any],
        ledger: Ledger | None = None,
        spool_dir: Path | None = None,
    ) -> None:
        self.experiment = experiment
        config = experiment.config
        self.federation = experiment.federation
        self.profiles = ProfileSampler(config.client_profiles, config.seed)
        self.trainer = LocalTrainer(experiment.build_model, private_seed=keyed_by_run(config.seed))
        evaluation = config.evaluation
        sample = evaluation_sample(self.federation, evaluation, config.seed)
        self.coordinator = Coordinator(
            experiment.strategy,
            experiment.layout,
            experiment.initial_model(),
            self,
            max_versions=config.rounds,
            num_clients=config.num_clients,
            ledger=ledger,
            policy=config.validation,
            hash_models=config.simulation.hash_models,
            client_speed=lambda client: self.profiles.profile(client).step_seconds,
            evaluation=FederatedEvaluation.of(evaluation, config.rounds, config.seed),
            evaluation_candidates=lambda: sample,
            spool_dir=spool_dir,
            declared_examples=lambda client: len(self.federation.train_parts[client]),
            privacy=privacy_accountant(config, keyed_noise(config.seed)),
            min_trainable=config.clients_per_round,
        )
        self._clock = 0.0
        self._events: list[Event] = []
        self._seq = itertools.count()
        self._in_flight: dict[int, InFlight] = {}
        #: Evaluation replies not yet given to the coordinator, in the order they were sent.
        self._evaluations: deque[Future[Update] | Callable[[], Update]] = deque()
        self.workers = pool_workers(config, experiment.strategy.keeps_client_state)
        self._pool = self._start_pool(config_data) if self.workers else None
        self.bytes_down = 0
        self.bytes_up = 0
        #: The model version each client last received in full (it need not get it again).
        self.held: dict[int, int] = {}

    # -- Driver ------------------------------------------------------------------------------
    def now(self) -> float:
        """The virtual clock."""
        return self._clock

    def send(self, task: Task, model: GlobalModel) -> None:
        """Schedule the task's work-done event (or its client's dropout) from the device
        profile; an evaluation starts at once, its reply delivered at the end of this event."""
        client = task.client_id
        if technique_type(task.technique).data == "holdout":
            self._evaluations.append(self._compute(task, model))
            return
        sent = self._download_bytes(task, model)
        self.bytes_down += sent
        profile = self.profiles.profile(client)
        passes = self.trainer.passes(task, len(self.federation.train_parts[client]))
        download = profile.transfer_seconds(sent)
        compute = passes * self.profiles.step_seconds(client, self._clock)
        if self.profiles.drops_out(client, task.seed):
            self._in_flight[client] = InFlight(task, model)
            self._push(self._clock + download + compute / 2, EventKind.LOST, client)
            return
        flight = InFlight(task, model)
        if self._pool is not None:
            params, buffers = self._model_for(task, model)
            flight.result = self._pool.submit(_run_in_worker, task, params, buffers)
        self._in_flight[client] = flight
        self._push(self._clock + download + compute, EventKind.WORKED, client)

    def _download_bytes(self, task: Task, model: GlobalModel) -> int:
        """Bytes a task's download sends: its extras, and the model unless the client holds
        that version (a masked download: the mask's bits and the kept values)."""
        layout = self.experiment.layout
        extras = sum(t.numel() * t.element_size() for n, t in task.extras.items() if n != MASK)
        if task.download == "none" or self.held.get(task.client_id) == task.version:
            return extras
        if task.download == "masked":
            kept = int(task.extras[MASK].sum())
            mask_bytes = (layout.params.numel + 7) // 8
            return extras + mask_bytes + kept * model.params.element_size() + layout.buffers.nbytes
        self.held[task.client_id] = task.version
        return extras + layout.params.nbytes + layout.buffers.nbytes

    @staticmethod
    def _model_for(task: Task, model: GlobalModel) -> tuple[torch.Tensor, torch.Tensor]:
        """The starting model as the client receives it (zero outside a masked download's mask)."""
        if task.download == "masked":
            return model.params * task.extras[MASK], model.buffers
        return model.params, model.buffers

    def _compute(self, task: Task, model: GlobalModel) -> Future[Update] | Callable[[], Update]:
        """An evaluation's reply: computing in the pool, or to compute here when it is due."""
        params, buffers = self._model_for(task, model)
        if self._pool is not None:
            return self._pool.submit(_run_in_worker, task, params, buffers)
        return lambda: self.trainer.run(task, params, buffers, task_data(self.federation, task))

    def _deliver_evaluations(self) -> None:
        """Give the coordinator every evaluation reply sent so far, in the order sent."""
        while self._evaluations:
            reply = self._evaluations.popleft()
            self.coordinator.receive_evaluation(
                reply.result() if isinstance(reply, Future) else reply()
            )

    def _start_pool(self, config_data: dict[str, Any]) -> ProcessPoolExecutor:
        """The worker pool, its processes started now: forked (sharing this process's loaded
        data) before this process runs any other thread, when torch runs on one thread here, so
        no thread pool is inherited half-made; spawned, each loading the data, otherwise."""
        if self.experiment.config.threads == 1 and sys.platform == "linux":
            _WORKER.update(
                federation=self.federation,
                trainer=LocalTrainer(
                    self.experiment.build_model,
                    private_seed=keyed_by_run(self.experiment.config.seed),
                ),
            )
            pool = ProcessPoolExecutor(
                self.workers, mp_context=get_context("fork"), initializer=_leave_interrupts
            )
            pool.submit(int).result()
            _WORKER.clear()
            return pool
        return ProcessPoolExecutor(
            self.workers,
            mp_context=get_context("spawn"),
            initializer=_init_worker,
            initargs=(config_data,),
        )

    def schedule(self, at: float, key: str) -> None:
        """A timer event at virtual time `at`."""
        self._push(at, EventKind.TIMER, key=key)

    # -- running -----------------------------------------------------------------------------
    def run(self, on_publish: Callable[[Publication], None] | None = None) -> SimulationResult:
        """Process events until the last version, the time budget, or no events remain."""
        if on_publish is not None:
            self.coordinator.listeners.append(on_publish)
        coordinator = self.coordinator
        coordinator.add_clients(range(self.experiment.config.num_clients))
        for index, at in enumerate(self.profiles.outage_starts()):
            self._push(at, EventKind.OUTAGE, key=str(index))
        coordinator.start()
        self._deliver_evaluations()
        max_time = self.experiment.config.simulation.max_time
        reason = "all clients gone: no client can be scheduled and none is training"
        try:
            while self._events and not coordinator.finished:
                event = heapq.heappop(self._events)
                if max_time and event.time > max_time:
                    reason = f"virtual time budget of {max_time} s reached"
                    break
                self._clock = event.time
                self._handle(event)
                self._deliver_evaluations()
            if coordinator.finished:
                reason = coordinator.stop_reason
        except KeyboardInterrupt:
            reason = (
                f"{INTERRUPTED} at model version {coordinator.model.version} of "
                f"{self.experiment.config.rounds}"
            )
        finally:
            self.close()
        return SimulationResult(
            coordinator.model, self._clock, reason, self.bytes_down, self.bytes_up
        )

    def close(self) -> None:
        """Stop worker processes and the ledger."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
        self.coordinator.ledger.close()

    def _handle(self, event: Event) -> None:
        coordinator = self.coordinator
        if event.kind is EventKind.TIMER:
            coordinator.timer(event.key)
        elif event.kind is EventKind.WORKED:
            flight = self._in_flight[event.client]
            flight.update = self._train(flight)
            upload = self.profiles.profile(event.client).transfer_seconds(flight.update.nbytes)
            self._push(self._clock + upload, EventKind.ARRIVAL, event.client)
        elif event.kind is EventKind.ARRIVAL:
            flight = self._in_flight.pop(event.client)
            assert flight.update is not None
            self.bytes_up += flight.update.nbytes
            back = self._back_after(event.client, flight.task.seed)
            coordinator.receive(flight.update, then_idle=back <= self._clock)
            if back > self._clock:
                self._push(back, EventKind.IDLE, event.client)
        elif event.kind is EventKind.LOST:
            flight = self._in_flight.pop(event.client)
            coordinator.task_lost(flight.task)
            self._return_later(event.client, flight.task.seed)
        elif event.kind is EventKind.OUTAGE:
            self._begin_outage()
        else:
            self._come_back(event.client)

    def _begin_outage(self) -> None:
        """Idle clients an outage hits leave now; busy or offline ones are held back when they
        would next become idle (`_come_back`, `_return_later`)."""
        for client in self.coordinator.idle_clients():
            back = self.profiles.offline_until(client, self._clock)
            if back > self._clock:
                self.coordinator.client_gone(client)
                self._push(back, EventKind.IDLE, client)

    def _come_back(self, client: int) -> None:
        back = self.profiles.offline_until(client, self._clock)
        if back > self._clock:
            self._push(back, EventKind.IDLE, client)
        else:
            self.coordinator.client_idle(client)

    def _train(self, flight: InFlight) -> Update:
        if flight.result is not None:
            return flight.result.result()
        task = flight.task
        return self.trainer.run(
            task, *self._model_for(task, flight.model), task_data(self.federation, task)
        )

    def _back_after(self, client: int, task_seed: int, rejoin: bool = False) -> float:
        """When a client that just finished (or lost) a task is available again."""
        delay = self.profiles.offline_after(client, task_seed, forced=rejoin)
        return self.profiles.offline_until(client, self._clock + delay)

    def _return_later(self, client: int, task_seed: int) -> None:
        """A client whose task was lost rejoins after its forced offline time."""
        back = self._back_after(client, task_seed, rejoin=True)
        if back > self._clock:
            self._push(back, EventKind.IDLE, client)
        else:
            self.coordinator.client_idle(client)

    def _push(self, at: float, kind: EventKind, client: int = -1, key: str = "") -> None:
        heapq.heappush(self._events, Event(at, kind, next(self._seq), client, key))


def pool_workers(config: ExperimentConfig, keeps_client_state: bool) -> int:
    """Worker processes for simulated clients: `simulation.workers`, or with "auto" one per
    usable core when there are two or more (this process then mostly waits on them, so the
    run does not oversubscribe the cores). None when the strategy's clients keep state between
    tasks: one process must play them all."""
    workers = config.simulation.workers
    if keeps_client_state:
        if workers not in ("auto", 0):
            raise ConfigError(
                f"simulation.workers: must be 0 or auto with strategy {config.strategy['name']}, "
                f"whose clients keep state between tasks, got {workers}"
            )
        return 0
    if workers == "auto":
        cores = len(os.sched_getaffinity(0))
        return cores if cores >= 2 else 0
    return int(workers)


def task_data(federation: Federation, task: Task) -> Split:
    """The client data the task's technique works on."""
    if technique_type(task.technique).data == "holdout":
        return federation.holdout_split(task.client_id)
    return federation.train_split(task.client_id)


_WORKER: dict[str, Any] = {}


def _leave_interrupts() -> None:
    """Per worker process: Ctrl-C reaches the whole process group, and the simulation, not its
    workers, handles it (stopping them once it has written what the run did)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _init_worker(config_data: dict[str, Any]) -> None:
    """Per spawned worker process: load the federation and one trainer; the config's plug-ins
    are imported by `parse_experiment`."""
    _leave_interrupts()
    config, _ = parse_experiment(config_data)
    torch.set_num_threads(config.threads)
    federation = make_federation(config)
    _WORKER["federation"] = federation
    _WORKER["trainer"] = LocalTrainer(
        model_builder(config, federation.dataset), private_seed=keyed_by_run(config.seed)
    )


def _run_in_worker(task: Task, params: torch.Tensor, buffers: torch.Tensor) -> Update:
    """Run one task (training or evaluation) in a worker process."""
    trainer: LocalTrainer = _WORKER["trainer"]
    return trainer.run(task, params, buffers, task_data(_WORKER["federation"], task))


def simulate(
    config_data: dict[str, Any], run_path: Path | None, overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """Run the experiment `config_data` describes (composed from `overrides`, which the summary
    records); write its run directory; return the summary with `history`, every metrics row."""
    experiment = make_experiment(config_data)
    ledger = open_ledger(experiment, run_path)
    spool_dir = None if run_path is None else run_path / "spool"
    simulation = Simulation(experiment, config_data, ledger, spool_dir)
    report = RunReport(
        experiment,
        config_data,
        run_path,
        lambda: {"bytes_down": simulation.bytes_down, "bytes_up": simulation.bytes_up},
        overrides=overrides,
        stop=simulation.coordinator.stop,
    )
    report.follow(simulation.coordinator)
    with report:
        result = simulation.run()
    summary = report.finish(
        result.final,
        ledger,
        stop_reason=result.stop_reason,
        virtual_seconds=result.virtual_seconds,
        workers=simulation.workers,
    )
    return {**summary, "history": report.rows}
