"""Synchronous rounds fold arrivals in client order: the same bits in any arrival order, with a
member lost or missing at the deadline, and for FedAMD's initial phase; held arrivals wait on
disk when large."""

import itertools

import pytest
import torch

from fedcore.params import ModelLayout, ParamSpec
from fedcore.payloads import DenseDelta
from fedcore.records import Update
from fedcore.server.coordinator import KEEP_SPOOL_BYTES, Coordinator
from fedcore.strategies.base import Arrival, GlobalModel
from fedcore.strategies.fedamd import FedAMD, FedAMDConfig
from fedcore.strategies.fedavg import FedAvg, FedAvgConfig
from fedcore.strategies.rounds import ROUND_TIMER
from tests.harness import ScriptedContext

P = 4099
CLIENTS = 5


#: Scales far enough apart that sums depend on the order of addition, in float32 and float64.
SCALES = (1.0, 1e-9, 1e4, 1e-12, 7.0)


def _deltas() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(P, generator=generator) * scale for scale in SCALES]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_deltas_here_do_give_different_sums_in_different_orders(dtype):
    deltas = [d.to(dtype) * (i + 1) for i, d in enumerate(_deltas())]
    forward = sum(deltas, torch.zeros(P, dtype=dtype))
    backward = sum(reversed(deltas), torch.zeros(P, dtype=dtype))
    assert not torch.equal(forward, backward)


def _fedavg_round(order: tuple[int, ...], lose: int | None = None) -> torch.Tensor:
    strategy = FedAvg(FedAvgConfig(clients_per_round=CLIENTS), seed=3)
    ctx = ScriptedContext(strategy, torch.zeros(P), clients=CLIENTS)
    strategy.on_start()
    tasks = {task.client_id: task for task in ctx.tasks}
    deltas = _deltas()
    for client in order:
        if client == lose:
            strategy.on_task_lost(tasks[client])
        else:
            ctx.arrive(tasks[client], deltas[client], examples=client + 1)
    assert ctx.model.version == 1
    return ctx.model.params


def test_fedavg_gives_the_same_bits_in_every_arrival_order():
    models = {_fedavg_round(order) for order in itertools.permutations(range(CLIENTS))}
    reference = _fedavg_round(tuple(range(CLIENTS)))
    assert all(torch.equal(model, reference) for model in models)


@pytest.mark.parametrize("order", [(4, 2, 0, 3, 1), (0, 1, 2, 3, 4), (3, 4, 1, 2, 0)])
def test_a_lost_member_does_not_change_the_order_of_the_rest(order):
    assert torch.equal(_fedavg_round(order, lose=2), _fedavg_round((0, 1, 2, 3, 4), lose=2))


def test_a_round_closed_at_its_deadline_folds_the_arrived_in_client_order():
    def close_at_deadline(order: tuple[int, ...]) -> torch.Tensor:
        config = FedAvgConfig(clients_per_round=CLIENTS, round_timeout=10, min_fraction=0.5)
        strategy = FedAvg(config, seed=3)
        ctx = ScriptedContext(strategy, torch.zeros(P), clients=CLIENTS)
        strategy.on_start()
        tasks = {task.client_id: task for task in ctx.tasks}
        for client in order:
            ctx.arrive(tasks[client], _deltas()[client], examples=client + 1)
        assert ctx.model.version == 0, "member 3 is missing: the round waits"
        ctx.clock = 10
        strategy.on_timer(f"{ROUND_TIMER}-1")
        assert ctx.model.version == 1
        return ctx.model.params

    assert torch.equal(close_at_deadline((4, 1, 0, 2)), close_at_deadline((0, 1, 2, 4)))


def test_fedamd_initial_phase_stores_anchors_in_client_order():
    def initial_sum(order: tuple[int, ...]) -> torch.Tensor:
        config = FedAMDConfig(clients_per_round=CLIENTS, init_round=True)
        strategy = FedAMD(config, seed=3)
        ctx = ScriptedContext(strategy, torch.zeros(P), clients=CLIENTS)
        strategy.on_start()
        tasks = {task.client_id: task for task in ctx.tasks}
        for client in order:
            ctx.arrive(tasks[client], _deltas()[client])
        assert strategy.init_phase == "done" and strategy.grad_sum is not None
        return strategy.grad_sum

    assert torch.equal(initial_sum((4, 3, 2, 1, 0)), initial_sum((0, 1, 2, 3, 4)))


class _NoTransport:
    def now(self) -> float:
        return 0.0

    def send(self, task, model) -> None:
        raise AssertionError("nothing is dispatched here")

    def schedule(self, at, key) -> None:
        raise AssertionError("nothing is scheduled here")


def test_held_arrivals_wait_on_disk_when_large(tmp_path):
    large = KEEP_SPOOL_BYTES // 4
    params = torch.zeros(large)
    layout = ModelLayout(ParamSpec.from_named([("w", params)]), ParamSpec(()))
    model = GlobalModel(params, torch.zeros(0), 0)
    strategy = FedAvg(FedAvgConfig(clients_per_round=2), seed=0)
    spool = tmp_path / "spool"
    coordinator = Coordinator(
        strategy, layout, model, _NoTransport(), max_versions=1, num_clients=2, spool_dir=spool
    )
    small = Arrival(Update(1, 0, 10, DenseDelta(torch.randn(8))), model, 0)
    assert coordinator.keep(small).update.payload.values.untyped_storage().filename is None
    assert not spool.exists(), "the spool folder is made only when something goes there"
    delta = torch.randn(large)
    kept = coordinator.keep(Arrival(Update(1, 0, 10, DenseDelta(delta)), model, 0))
    assert isinstance(kept.update.payload, DenseDelta)
    assert kept.update.payload.values.untyped_storage().filename is not None
    assert torch.equal(kept.update.payload.values, delta)
    assert list(spool.iterdir()) == [], "the spool file is unlinked: freed with the arrival"


def test_held_arrivals_stay_in_memory_within_the_budget(tmp_path):
    """One large held update fits `keep_in_memory_bytes`; the next goes to disk until the first
    is freed, and then memory is used again."""
    large = KEEP_SPOOL_BYTES // 4
    params = torch.zeros(large)
    layout = ModelLayout(ParamSpec.from_named([("w", params)]), ParamSpec(()))
    model = GlobalModel(params, torch.zeros(0), 0)
    coordinator = Coordinator(
        FedAvg(FedAvgConfig(clients_per_round=2), seed=0),
        layout,
        model,
        _NoTransport(),
        max_versions=1,
        num_clients=2,
        spool_dir=tmp_path / "spool",
        keep_in_memory_bytes=KEEP_SPOOL_BYTES,
    )

    def kept(client: int) -> torch.Tensor:
        arrival = Arrival(Update(client, 0, 10, DenseDelta(torch.randn(large))), model, 0)
        values = coordinator.keep(arrival).update.payload
        assert isinstance(values, DenseDelta)
        return values.values

    first = kept(0)
    assert first.untyped_storage().filename is None
    second = kept(1)
    assert second.untyped_storage().filename is not None
    del first
    assert kept(0).untyped_storage().filename is None
