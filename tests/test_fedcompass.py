"""FedCompass driven event by event (hand-computed groups, steps, deadlines, late updates) and
in the simulation (equal speeds, a client that slows down)."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from fedcore.config import TrainingConfig
from fedcore.records import Task
from fedcore.server.experiment import make_experiment, parse_experiment
from fedcore.server.simulation import Simulation
from fedcore.state_files import pack, unpack
from fedcore.strategies.fedavg import FedAvg, FedAvgConfig
from fedcore.strategies.fedcompass import Buffered, FedCompass, FedCompassConfig
from fedcore.strategies.staleness import StalenessConfig, staleness_weight
from fedcore.typed_config import ConfigError
from tests.conftest import FAST, composed
from tests.harness import ScriptedContext, record_sends

P = 64


def _delta(seed: int) -> torch.Tensor:
    return torch.randn(P, generator=torch.Generator().manual_seed(seed))


def _compass(
    clients: int, speeds: dict[int, float], **options
) -> tuple[FedCompass, ScriptedContext]:
    strategy = FedCompass(FedCompassConfig(**options), seed=0)
    ctx = ScriptedContext(strategy, torch.zeros(P), clients)
    ctx.speeds.update(speeds)
    return strategy, ctx


def _task(ctx: ScriptedContext, client: int) -> Task:
    return [t for t in ctx.tasks if t.client_id == client][-1]


def _arrive_at(ctx: ScriptedContext, at: float, client: int, delta: torch.Tensor, n: int = 10):
    ctx.clock = at
    ctx.arrive(_task(ctx, client), delta, n)


def test_groups_and_steps_match_a_hand_computed_schedule():
    # Speeds 1, 2, 4, 10 s/step; Q in [20, 100]; lambda 1.5.
    strategy, ctx = _compass(4, {0: 1.0, 1: 2.0, 2: 4.0, 3: 10.0})
    strategy.on_start()
    # Client 0 (fastest) founds group 0: Q_max = 100 steps, T_a = 100, T_max = 150.
    # Clients 1 and 2 join it with floor(100 / 2) = 50 and floor(100 / 4) = 25 steps.
    # Client 3 would get floor(100 / 10) = 10 < Q_min: it founds group 1 aimed at the next
    # return of group 0's fastest member, 150 + 1 * 100 = 250: floor(250 / 10) = 25 steps,
    # T_a = 250, T_max = 1.5 * 250 = 375.
    assert {t.client_id: t.local_steps for t in ctx.tasks} == {0: 100, 1: 50, 2: 25, 3: 25}
    assert ctx.timers == {"compass-group-0": 150.0, "compass-group-1": 375.0}
    assert _task(ctx, 1).deadline == 150.0 and _task(ctx, 3).deadline == 375.0

    deltas = {c: _delta(c) for c in range(3)}
    _arrive_at(ctx, 100.0, 2, deltas[2], 60)
    _arrive_at(ctx, 100.0, 0, deltas[0], 10)
    assert ctx.model.version == 0 and len(ctx.tasks) == 4, "early members wait for their group"
    _arrive_at(ctx, 110.0, 1, deltas[1], 30)  # 2.2 s/step: estimate 0.1 * 2 + 0.9 * 2.2 = 2.18
    assert ctx.model.version == 1
    expected = 0.9 * (60 * deltas[2] + 10 * deltas[0] + 30 * deltas[1]) / 100
    assert torch.allclose(ctx.model.params, expected, atol=1e-6)
    info = ctx.infos[-1]
    assert info["group"] == 0 and info["clients"] == [2, 0, 1] and info["steps"] == [25, 100, 50]
    assert info["staleness"] == [0, 0, 0] and info["late"] == []
    assert strategy.clients[1].speed == pytest.approx(2.18)

    # Reassignment at t = 110, fastest first (the reference's GROUP_AGG), client 1, whose arrival
    # closed the group, included: 0 (1 s/step), 1 (2.18), 2 (4). Client 0: group 1 would need
    # floor(140 / 1) = 140 steps > Q_max, and group 1's fastest (10 s/step) returns far beyond
    # Q_max: a new group 2 with 100 steps (T_a = 210, T_max = 260). Client 1: group 1 allows
    # floor(140 / 2.18) = 64, group 2 floor(100 / 2.18) = 45: group 1 with 64. Client 2: group 1
    # allows floor(140 / 4) = 35, group 2 floor(100 / 4) = 25: it joins group 1 with 35.
    assert [(t.client_id, t.local_steps, t.version) for t in ctx.tasks[4:]] == [
        (0, 100, 1),
        (1, 64, 1),
        (2, 35, 1),
    ]
    assert ctx.timers["compass-group-2"] == 260.0
    assert strategy.planner.groups[1].expected == {1, 2, 3}


def test_deadline_closes_the_group_and_a_late_update_is_applied_once_with_its_staleness():
    strategy, ctx = _compass(2, {0: 1.0, 1: 1.0}, alpha=1.0)
    strategy.on_start()
    assert [t.local_steps for t in ctx.tasks] == [100, 100]
    assert ctx.timers == {"compass-group-0": 150.0}
    d0, d1, d0b, d1b = (_delta(s) for s in range(4))
    _arrive_at(ctx, 100.0, 0, d0)
    ctx.clock = 150.0
    strategy.on_timer("compass-group-0")
    assert ctx.model.version == 1 and torch.allclose(ctx.model.params, d0)
    assert ctx.infos[-1]["stragglers"] == [1]
    # Client 0 is reassigned at once: no open group, so a new one with Q_max (T_a = 250).
    assert [(t.client_id, t.local_steps) for t in ctx.tasks[2:]] == [(0, 100)]

    _arrive_at(ctx, 200.0, 1, d1)  # late: buffered, not applied
    assert ctx.model.version == 1 and len(strategy.late) == 1
    # Its estimate becomes 0.1 * 1 + 0.9 * 2 = 1.9 s/step; it joins group 1 with
    # floor((250 - 200) / 1.9) = 26 steps.
    assert ctx.tasks[-1].client_id == 1 and ctx.tasks[-1].local_steps == 26

    _arrive_at(ctx, 249.0, 1, d1b)
    _arrive_at(ctx, 250.0, 0, d0b)
    assert ctx.model.version == 2
    info = ctx.infos[-1]
    assert info["late"] == [1] and info["clients"] == [1, 1, 0] and info["staleness"] == [1, 0, 0]
    expected = d0 + (2**-0.5 * d1 + d1b + d0b) / 3
    assert torch.allclose(ctx.model.params, expected, atol=1e-6)
    assert not strategy.late and not strategy.waiting.get(1), "buffers are freed"

    # Reassigned fastest first at t = 250: client 0 founds a group with Q_max (T_a = 350) and
    # client 1 (1.886 s/step) joins it with floor(100 / 1.886) = 53 steps. The next aggregation
    # holds their two new updates only: the late one was counted exactly once.
    assert [(t.client_id, t.local_steps) for t in ctx.tasks[-2:]] == [(0, 100), (1, 53)]
    _arrive_at(ctx, 350.0, 0, torch.ones(P))
    assert ctx.model.version == 2, "client 0 waits for its group"
    _arrive_at(ctx, 351.0, 1, torch.ones(P))
    assert ctx.model.version == 3 and ctx.infos[-1]["clients"] == [0, 1]
    assert ctx.infos[-1]["late"] == []
    assert torch.allclose(ctx.model.params, expected + 1, atol=1e-6)
    assert sum(i["updates"] for i in ctx.infos) == 6, "six updates arrived, each applied once"


def test_a_group_closing_with_no_arrivals_leaves_the_late_buffer_for_the_next_group():
    strategy, ctx = _compass(3, {0: 1.0, 1: 1.0, 2: 1.0}, alpha=1.0)
    strategy.on_start()
    assert ctx.timers == {"compass-group-0": 150.0}
    d0 = _delta(0)
    _arrive_at(ctx, 100.0, 0, d0)
    ctx.clock = 150.0
    strategy.on_timer("compass-group-0")  # closes with client 0: clients 1 and 2 become late
    assert ctx.model.version == 1
    _arrive_at(ctx, 160.0, 1, _delta(1))  # late: buffered
    assert len(strategy.late) == 1
    (group,) = [g for g in strategy.planner.groups.values() if 2 not in g.members()]
    # Client 0's new group (T_a = 250) and client 1 in it; a group with nobody arriving by its
    # deadline must not apply the late buffer on its own.
    for member in sorted(group.expected):
        strategy.on_task_lost(_task(ctx, member))
    assert ctx.model.version == 1 and len(strategy.late) == 1, "late update kept for later"
    _arrive_at(ctx, 170.0, 2, _delta(2))  # client 2 is late too
    assert len(strategy.late) == 2 and ctx.model.version == 1


def test_late_updates_count_with_alpha_staleness_and_share_and_buffers_take_the_share():
    strategy, ctx = _compass(2, {}, alpha=0.5)
    ctx.publish(torch.zeros(P), torch.zeros(0))
    entries = [
        Buffered(0, torch.ones(P), None, 30, 10, base_version=0),
        Buffered(1, torch.ones(P), None, 10, 10, base_version=1),
    ]
    assert strategy.shares(entries) == [0.75, 0.25]
    assert strategy.coefficients(entries) == pytest.approx([0.5 * 2**-0.5 * 0.75, 0.5 * 0.25])


def test_federation_weighting_is_one_over_the_number_of_clients():
    strategy, _ = _compass(8, {}, weighting="federation")
    entries = [Buffered(c, torch.ones(P), None, 10 * (c + 1), 10, 0) for c in range(3)]
    assert strategy.shares(entries) == [1 / 8] * 3
    assert strategy.coefficients(entries) == pytest.approx([0.9 / 8] * 3)


@pytest.mark.parametrize("function", ["polynomial", "hinge", "constant"])
def test_aggregation_weight_never_grows_with_staleness(function):
    strategy, ctx = _compass(1, {}, staleness=StalenessConfig(function, a=0.5, b=2))
    ctx.publish(torch.zeros(P), torch.zeros(0))
    for _ in range(20):
        ctx.publish(torch.zeros(P), torch.zeros(0))
    entries = [Buffered(0, torch.zeros(P), None, 10, 50, base) for base in range(21, -1, -1)]
    coefs = strategy.coefficients(entries)
    assert all(later <= earlier for earlier, later in itertools.pairwise(coefs))
    config = StalenessConfig(function, a=0.5, b=2)
    assert coefs[-1] == pytest.approx(0.9 / 22 * staleness_weight(21, config))
    if function != "constant":
        assert coefs[-1] < coefs[0]


def test_step_normalisation_rescales_by_effective_steps():
    strategy, _ = _compass(1, {}, alpha=1.0, weighting="uniform", normalize_steps=True)
    entries = [Buffered(c, torch.zeros(P), None, 10, q, 0) for c, q in enumerate((20, 60))]
    # Q_eff = (20 + 60) / 2 = 40: coefficients 0.5 * 40 / 20 and 0.5 * 40 / 60.
    assert strategy.coefficients(entries) == pytest.approx([1.0, 1 / 3])


def test_equal_speeds_behave_like_synchronous_fedavg_with_q_max_steps():
    compass, ctx = _compass(4, dict.fromkeys(range(4), 0.5), alpha=1.0)
    fedavg = FedAvg(
        FedAvgConfig(clients_per_round=4, norm_bound=0, training=TrainingConfig(local_steps=100)),
        seed=0,
    )
    reference = ScriptedContext(fedavg, torch.zeros(P), 4)
    compass.on_start()
    fedavg.on_start()
    for round_number in range(3):
        now = 50.0 * (round_number + 1)
        batch = ctx.tasks[-4:]
        assert [t.local_steps for t in batch] == [100] * 4
        assert len(compass.planner.groups) == 1
        for client, task in enumerate(batch):
            delta, n = _delta(10 * round_number + client), 5 + client
            _arrive_at(ctx, now, task.client_id, delta, n)
            reference.arrive(reference.tasks[-4 + client], delta, n)
        assert ctx.model.version == reference.model.version == round_number + 1
        assert torch.allclose(ctx.model.params, reference.model.params, atol=1e-6)
        assert ctx.infos[-1]["staleness"] == [0] * 4


def test_client_without_a_speed_trains_alone_first_then_joins_groups():
    strategy, ctx = _compass(2, {0: 1.0}, initial_local_steps=40, alpha=1.0)
    strategy.on_start()
    assert [(t.client_id, t.local_steps) for t in ctx.tasks] == [(0, 100), (1, 40)]
    _arrive_at(ctx, 80.0, 1, torch.ones(P))  # applied at once: 2 s/step measured
    assert ctx.model.version == 1 and ctx.infos[-1]["group"] == -1
    assert torch.equal(ctx.model.params, torch.ones(P))
    # Group 0 would allow floor((100 - 80) / 2) = 10 < Q_min steps; its fastest member's next
    # return is expected at 150 + 1 * 100 = 250: floor((250 - 80) / 2) = 85 steps.
    assert ctx.tasks[-1].client_id == 1 and ctx.tasks[-1].local_steps == 85


def test_lost_member_no_longer_holds_its_group_back():
    strategy, ctx = _compass(3, dict.fromkeys(range(3), 1.0), alpha=1.0)
    strategy.on_start()
    _arrive_at(ctx, 100.0, 0, torch.ones(P))
    _arrive_at(ctx, 100.0, 1, torch.ones(P))
    strategy.on_task_lost(_task(ctx, 2))
    assert ctx.model.version == 1 and ctx.infos[-1]["clients"] == [0, 1]
    assert not strategy.planner.groups or all(
        2 not in g.members() for g in strategy.planner.groups.values()
    )


def test_state_round_trip_continues_identically():
    def scenario() -> tuple[FedCompass, ScriptedContext]:
        strategy, ctx = _compass(3, {0: 1.0, 1: 2.0, 2: 8.0})
        strategy.on_start()
        _arrive_at(ctx, 100.0, 0, _delta(1))
        return strategy, ctx

    original, ctx = scenario()
    tensors: dict[str, torch.Tensor] = {}
    document = json.dumps(pack(original.state_dict(), tensors))
    state = unpack(json.loads(document), tensors)
    assert state["waiting"]["0"][0]["client"] == 0 and len(tensors) == 1
    _, resumed_ctx = scenario()
    fresh = FedCompass(FedCompassConfig(), seed=123)
    fresh.attach(resumed_ctx)
    fresh.load_state_dict(state)
    resumed_ctx.strategy = fresh
    assert fresh.state_dict().keys() == state.keys()
    for strategy, context in ((original, ctx), (fresh, resumed_ctx)):
        _arrive_at(context, 210.0, 1, _delta(2))
        _arrive_at(context, 400.0, 2, _delta(3))
        context.clock = 500.0
        for key in sorted(context.timers):
            strategy.on_timer(key)
    assert [(t.client_id, t.local_steps, t.seed) for t in ctx.tasks] == [
        (t.client_id, t.local_steps, t.seed) for t in resumed_ctx.tasks
    ]
    assert ctx.infos == resumed_ctx.infos
    assert torch.equal(ctx.model.params, resumed_ctx.model.params)


def test_bad_step_bounds_are_a_config_error_naming_the_key():
    data = composed(
        *FAST, "strategy=fedcompass", "strategy.min_local_steps=50", "strategy.max_local_steps=10"
    )
    with pytest.raises(ConfigError, match=r"strategy\.max_local_steps: must be >= min_local_steps"):
        parse_experiment(data)


def _simulated_tasks(*overrides: str) -> tuple[list[tuple[float, Task]], Simulation]:
    config = composed(*FAST, "strategy=fedcompass", *overrides)
    simulation = Simulation(make_experiment(config), config)
    sent = record_sends(simulation)
    simulation.run()
    return sent, simulation


def test_simulation_with_equal_devices_aggregates_everyone_every_version():
    sent, _ = _simulated_tasks(
        "num_clients=4",
        "clients_per_round=4",
        "rounds=4",
        "client_profiles=uniform",
        "strategy.max_local_steps=10",
        "strategy.min_local_steps=2",
    )
    assert [t.local_steps for _, t in sent] == [10] * 16
    assert [t.version for _, t in sent] == [v for v in range(4) for _ in range(4)]


def test_client_that_slows_down_gets_fewer_steps_within_a_few_returns():
    sent, simulation = _simulated_tasks(
        "num_clients=4",
        "clients_per_round=4",
        "rounds=40",
        "client_profiles=uniform",
        "client_profiles.bandwidth_mbps=1000",
        "+client_profiles.slowdowns=[{at: 3.0, fraction: 0.5, factor: 4.0}]",
        "strategy.max_local_steps=20",
        "strategy.min_local_steps=2",
        "evaluation.every=100",
    )
    profiles = simulation.profiles
    slowed = {c for c in range(4) if profiles.step_seconds(c, 10.0) > profiles.step_seconds(c, 0)}
    assert 0 < len(slowed) < 4
    factor = {c: profiles.step_seconds(c, 10.0) / profiles.step_seconds(c, 0) for c in range(4)}
    assert {round(f) for f in factor.values()} == {1, 4}
    for client in range(4):
        before = [t.local_steps for at, t in sent if t.client_id == client and at < 3.0]
        after = [t.local_steps for at, t in sent if t.client_id == client and at >= 3.0]
        assert before and all(steps == 20 for steps in before)
        assert len(after) >= 4
        if client in slowed:
            # The first task after the slowdown was planned at the old speed and returns late;
            # from its next task on the estimate (0.9 on the newest sample) has caught up: the
            # client gets about a quarter of the steps, (1.1 s - 0.1 s transfer) / 0.2 s = 5,
            # less the transfer time in the estimate.
            assert after[0] == 20 and all(3 <= steps <= 5 for steps in after[1:]), after
        else:
            assert all(steps == 20 for steps in after), after
