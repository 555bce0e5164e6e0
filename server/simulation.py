"""Discrete-event simulation: virtual clients on a virtual clock, driving the real coordinator.

A dispatched task finishes its local work at now + download + passes x seconds-per-step, from
the client's device profile (seconds-per-step as of dispatch, after any scheduled slowdown), and
arrives after uploading the bytes its payload really has; the download charges the bytes really
sent (nothing for a version the client already holds, a masked sub-model's mask and values). A
client in a scheduled outage becomes idle only when it ends. Local work really runs, in-process
when its work-done event is reached or ahead of time in a `spawn` worker pool. Federated
evaluation tasks run at once, beside training: they charge neither time nor bytes, so turning
evaluation up or down never changes a run's training. Clients exist only
as ids until they train, so memory follows the clients in flight.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from enum import IntEnum
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from fedcore.clients.techniques import technique_type
from fedcore.clients.trainer import LocalTrainer
from fedcore.data.split import Split
from fedcore.federation import make_federation, model_builder
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
from fedcore.server.reporting import RunReport, open_ledger
from fedcore.strategies.base import GlobalModel


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
        torch.set_num_threads(config.threads)
        self.federation = experiment.federation
        self.profiles = ProfileSampler(config.client_profiles, config.seed)
        self.trainer = LocalTrainer(experiment.build_model)
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
            evaluation=FederatedEvaluation(
                evaluation.every, evaluation.federated_clients, config.rounds, config.seed
            ),
            evaluation_candidates=lambda: sample,
            spool_dir=spool_dir,
            declared_examples=lambda client: len(self.federation.train_parts[client]),
        )
        self._clock = 0.0
        self._events: list[Event] = []
        self._seq = itertools.count()
        self._in_flight: dict[int, InFlight] = {}
        self._pool: ProcessPoolExecutor | None = None
        if config.simulation.workers:
            self._pool = ProcessPoolExecutor(
                config.simulation.workers,
                mp_context=get_context("spawn"),
                initializer=_init_worker,
                initargs=(config_data,),
            )
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
        profile; an evaluation runs at once."""
        client = task.client_id
        if technique_type(task.technique).data == "holdout":
            update = self.trainer.run(task, *self._model_for(task, model), self._data(task))
            self.coordinator.receive_evaluation(update)
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
            flight.result = self._pool.submit(_train_in_worker, task, params, buffers)
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

    def _data(self, task: Task) -> Split:
        """The client data the task's technique works on."""
        client = task.client_id
        if technique_type(task.technique).data == "holdout":
            return self.federation.holdout_split(client)
        return self.federation.train_split(client)

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
            if coordinator.finished:
                reason = f"reached {self.experiment.config.rounds} model versions"
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
        return self.trainer.run(task, *self._model_for(task, flight.model), self._data(task))

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


_WORKER: dict[str, Any] = {}


def _init_worker(config_data: dict[str, Any]) -> None:
    """Per worker process: load the federation and one trainer (single-threaded torch); the
    config's plug-ins are imported by `parse_experiment`."""
    config, _ = parse_experiment(config_data)
    torch.set_num_threads(config.threads)
    federation = make_federation(config)
    _WORKER["federation"] = federation
    _WORKER["trainer"] = LocalTrainer(model_builder(config, federation.dataset))


def _train_in_worker(task: Task, params: torch.Tensor, buffers: torch.Tensor) -> Update:
    """Train one task in a worker process."""
    data = _WORKER["federation"].train_split(task.client_id)
    trainer: LocalTrainer = _WORKER["trainer"]
    return trainer.run(task, params, buffers, data)


def simulate(config_data: dict[str, Any], run_path: Path | None) -> dict[str, Any]:
    """Run the experiment `config_data` describes; write its run directory; return the summary."""
    experiment = make_experiment(config_data)
    ledger = open_ledger(experiment, run_path)
    spool_dir = None if run_path is None else run_path / "spool"
    simulation = Simulation(experiment, config_data, ledger, spool_dir)
    report = RunReport(
        experiment,
        config_data,
        run_path,
        lambda: (simulation.bytes_down, simulation.bytes_up),
    )
    simulation.coordinator.evaluation_listeners.append(report.federated)
    with report:
        result = simulation.run(report.record)
    return report.finish(
        result.final, ledger, stop_reason=result.stop_reason, virtual_seconds=result.virtual_seconds
    )
