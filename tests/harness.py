"""A scripted StrategyContext that lets tests drive a strategy event by event with no runtime,
and a recorder of what a real simulation sends."""

from __future__ import annotations

from typing import Any

import torch

from fedcore.params import ModelLayout, ParamSpec
from fedcore.payloads import DenseDelta
from fedcore.records import Task, Update
from fedcore.server.simulation import Simulation
from fedcore.strategies.base import Arrival, GlobalModel, Strategy


class ScriptedContext:
    """Records dispatches, timers and publications; the test plays the clients and the clock."""

    def __init__(self, strategy: Strategy, params: torch.Tensor, clients: int) -> None:
        self._layout = ModelLayout(ParamSpec.from_named([("w", params)]), ParamSpec(()))
        self._model = GlobalModel(params, torch.zeros(0), 0)
        self.history: list[GlobalModel] = [self._model]
        self.clients = clients
        self.idle = set(range(clients))
        self.tasks: list[Task] = []
        self.timers: dict[str, float] = {}
        self.infos: list[dict[str, Any]] = []
        #: The strategy's state_dict at each publication, as the server checkpoints it.
        self.states: list[dict[str, Any]] = []
        self.clock = 0.0
        self.speeds: dict[int, float] = {}
        self.strategy = strategy
        strategy.attach(self)

    @property
    def now(self) -> float:
        return self.clock

    @property
    def model(self) -> GlobalModel:
        return self._model

    @property
    def layout(self) -> ModelLayout:
        return self._layout

    @property
    def num_clients(self) -> int:
        return self.clients

    def idle_clients(self) -> list[int]:
        return sorted(self.idle)

    def client_speed(self, client_id: int) -> float | None:
        return self.speeds.get(client_id)

    def dispatch(self, task: Task) -> None:
        self.idle.discard(task.client_id)
        self.tasks.append(task)

    def set_timer(self, at: float, key: str) -> None:
        self.timers[key] = at

    def keep(self, arrival: Arrival) -> Arrival:
        return arrival

    def publish(self, params: torch.Tensor, buffers: torch.Tensor, **info: Any) -> GlobalModel:
        self._model = GlobalModel(params, buffers, self._model.version + 1)
        self.history.append(self._model)
        self.infos.append(info)
        self.states.append(self.strategy.state_dict())
        return self._model

    def arrive(self, task: Task, delta: torch.Tensor, examples: int = 10) -> None:
        """Deliver the update of `task`, its client idle again from the arrival on, as the
        coordinator does for a client that is free at once (`Coordinator.receive`)."""
        update = Update(task.client_id, task.version, examples, DenseDelta(delta))
        base = self.history[task.version]
        self.idle.add(task.client_id)
        self.strategy.on_update(Arrival(update, base, self._model.version - task.version))
        if task.client_id in self.idle:
            self.strategy.on_client_idle(task.client_id)


def record_sends(simulation: Simulation) -> list[tuple[float, Task]]:
    """Every training task `simulation` sends from now on, with its virtual send time (filled as
    it runs); federated evaluation tasks are left out."""
    sent: list[tuple[float, Task]] = []
    original_send = simulation.send

    def send(task: Task, model: GlobalModel) -> None:
        if task.technique != "evaluate":
            sent.append((simulation.now(), task))
        original_send(task, model)

    simulation.send = send
    return sent
