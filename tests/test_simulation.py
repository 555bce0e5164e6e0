"""The simulation runtime end to end: FedAvg against an independent computation, determinism,
lazy clients, dropouts and worker pools."""

import os

import pytest
import torch

from fedcore.clients.trainer import LocalTrainer
from fedcore.records import Task
from fedcore.server.experiment import make_experiment, parse_experiment
from fedcore.server.ledger import read_ledger
from fedcore.server.simulation import EventKind, Simulation, pool_workers, simulate
from fedcore.typed_config import ConfigError
from tests.conftest import FAST, composed
from tests.harness import record_sends


def test_fedavg_round_equals_independent_weighted_mean_of_trained_clients():
    config = composed(*FAST, "rounds=1", "strategy.norm_bound=0")
    experiment = make_experiment(config)
    initial = experiment.initial_model()
    simulation = Simulation(experiment, config)
    recorded = record_sends(simulation)
    result = simulation.run()
    sent = [task for _, task in recorded]
    assert result.final.version == 1 and len(sent) == 5

    trainer = LocalTrainer(experiment.build_model)
    weighted, total = torch.zeros_like(initial.params, dtype=torch.float64), 0
    for task in sent:
        data = experiment.federation.train_split(task.client_id)
        update = trainer.run(task, initial.params, initial.buffers, data)
        weighted += len(data) * (initial.params.double() + update.payload.values.double())
        total += len(data)
    assert torch.allclose(result.final.params.double(), weighted / total, atol=1e-6)
    assert not torch.equal(result.final.params, initial.params)


def test_same_seed_same_model_bytes_other_seed_differs(tmp_path):
    first = simulate(composed(*FAST), tmp_path / "a")
    second = simulate(composed(*FAST), tmp_path / "b")
    other = simulate(composed(*FAST, "seed=1"), None)
    assert first["model_sha256"] == second["model_sha256"]
    assert (tmp_path / "a" / "model.fct").read_bytes() == (
        tmp_path / "b" / "model.fct"
    ).read_bytes()
    assert other["model_sha256"] != first["model_sha256"]


def test_run_directory_holds_metrics_plot_model_and_ledger(tmp_path):
    summary = simulate(composed(*FAST), tmp_path)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    assert (tmp_path / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    assert "test_accuracy" in (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert "strategy" in (tmp_path / "config.yaml").read_text()
    entries = read_ledger(tmp_path / "ledger.jsonl")
    assert sum(e["event"] == "accepted" for e in entries) == 15
    assert [e["version"] for e in entries if e["event"] == "model"] == [1, 2, 3]
    assert summary["final"]["test_accuracy"] > 0.3


def test_ten_thousand_clients_materialise_only_those_training():
    config = composed(
        *FAST,
        "num_clients=10000",
        "clients_per_round=20",
        "partition=iid",
        "partition.min_size=1",
        "partition.holdout=0.0",
        "dataset.options.num_train=30000",
        "evaluation.federated_clients=0",
    )
    experiment = make_experiment(config)
    simulation = Simulation(experiment, config)
    peak = []
    original_send = simulation.send

    def send(task, model):
        original_send(task, model)
        peak.append(len(simulation._in_flight))

    simulation.send = send
    result = simulation.run()
    assert result.final.version == 3
    assert max(peak) == 20


def test_dropouts_are_recorded_and_rounds_complete_at_their_deadline(tmp_path):
    summary = simulate(
        composed(
            *FAST,
            "rounds=4",
            "client_profiles.dropout=0.3",
            "strategy.round_timeout=20.0",
            "strategy.min_fraction=0.2",
            "client_profiles.offline_seconds=5.0",
        ),
        tmp_path,
    )
    assert summary["versions"] == 4
    assert summary["ledger"].get("lost", 0) > 0
    assert summary["ledger"]["accepted"] < 20


@pytest.mark.parametrize("threads", [1, 2])
def test_worker_pools_end_on_the_in_process_model_and_metrics_bit_for_bit(threads):
    """threads=1 forks the pool (it shares the loaded data); threads=2 spawns it (each worker
    loads the data). Federated evaluation (FAST asks 5 clients) runs in the pool too."""
    base = (*FAST, "rounds=2", f"threads={threads}")
    pooled = simulate(composed(*base, "simulation.workers=2"), None)
    in_process = simulate(composed(*base, "simulation.workers=0"), None)
    assert (pooled["workers"], in_process["workers"]) == (2, 0)
    assert pooled["model_sha256"] == in_process["model_sha256"]
    assert "fed_accuracy" in pooled["final"]
    assert pooled["final"] == in_process["final"]


def test_auto_workers_take_one_per_usable_core_and_none_when_clients_keep_state(monkeypatch):
    config, _ = parse_experiment(composed(*FAST))
    assert config.simulation.workers == "auto"
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert pool_workers(config, keeps_client_state=False) == 3
    assert pool_workers(config, keeps_client_state=True) == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert pool_workers(config, keeps_client_state=False) == 0
    client_store = ("strategy=fedamd", "strategy.gradient_store=client")
    assert make_experiment(composed(*FAST, *client_store)).strategy.keeps_client_state
    explicit = composed(*FAST, *client_store, "simulation.workers=2")
    with pytest.raises(ConfigError, match=r"simulation\.workers: must be 0 or auto with strategy"):
        Simulation(make_experiment(explicit), explicit)
    with pytest.raises(ConfigError, match=r"simulation\.workers: must be >= 0 or \"auto\""):
        parse_experiment(composed(*FAST, "simulation.workers=-1"))


def _upload_seconds(*overrides: str) -> tuple[float, int]:
    """Seconds from the end of local work to the arrival of the one task of a one-round run on a
    slow link (0.5 Mbit/s, no latency, fast steps), and the bytes it uploaded."""
    config = composed(
        *FAST,
        "rounds=1",
        "clients_per_round=1",
        "client_profiles=uniform",
        "client_profiles.bandwidth_mbps=0.5",
        "client_profiles.latency_seconds=0",
        "client_profiles.step_seconds=0.001",
        *overrides,
    )
    simulation = Simulation(make_experiment(config), config)
    events: dict[EventKind, float] = {}
    push = simulation._push

    def record(at: float, kind: EventKind, client: int = -1, key: str = "") -> None:
        events[kind] = at
        push(at, kind, client, key)

    simulation._push = record
    result = simulation.run()
    return events[EventKind.ARRIVAL] - events[EventKind.WORKED], result.bytes_up


def test_uploads_take_the_time_of_the_bytes_they_really_carry():
    dense_seconds, dense_bytes = _upload_seconds()
    sparse_seconds, sparse_bytes = _upload_seconds(
        "training.transforms=[{name: topk, fraction: 0.05}]"
    )
    assert sparse_bytes <= 0.1 * dense_bytes, "a top-5% upload carries under 10% of the bytes"
    assert dense_seconds >= 5 * sparse_seconds
    assert dense_seconds == pytest.approx(dense_bytes * 8 / 0.5e6)


def test_a_client_holding_the_version_is_not_sent_it_again():
    config = composed(*FAST, "rounds=1")
    experiment = make_experiment(config)
    simulation = Simulation(experiment, config)
    model = experiment.initial_model()
    task = Task(client_id=3, version=0, hyper={"lr": 0.1})
    layout = experiment.layout
    assert simulation._download_bytes(task, model) == layout.params.nbytes + layout.buffers.nbytes
    assert simulation._download_bytes(task, model) == 0, "client 3 holds version 0 now"
    mask = torch.zeros(layout.params.numel, dtype=torch.bool)
    mask[:100] = True
    masked = Task(client_id=4, version=0, extras={"mask": mask}, download="masked")
    expected = (layout.params.numel + 7) // 8 + 100 * 4 + layout.buffers.nbytes
    assert simulation._download_bytes(masked, model) == expected
    assert simulation.held.get(4) is None, "a masked sub-model is not the whole version"
    simulation.close()
