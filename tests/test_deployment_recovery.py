"""Crashes with real processes: a server killed with SIGKILL resumes from its checkpoints (past
damaged newer ones) to the uninterrupted result; a client killed mid-round is closed out at the
round deadline and rejoins; a server whose clients all vanish says so and exits."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from fedcore.server.coordinator import model_digest
from fedcore.server.experiment import make_experiment
from fedcore.server.ledger import read_ledger
from fedcore.server.rundir import read_model_file
from fedcore.server.simulation import Simulation
from fedcore.strategies.base import GlobalModel
from tests.processes import client, free_port, make_certs, start_server, wait_for
from tests.test_checkpoints import nest_state

pytestmark = pytest.mark.slow

BASE_ARGS = [
    "dataset=synthetic",
    "model=mlp",
    "training.local_steps=5",
    "output.progress=plain",
    "evaluation.federated_clients=2",
    "deployment.heartbeat_seconds=0.5",
]


def _server(root: Path, port: int, *args: str) -> subprocess.Popen[str]:
    return start_server(root, *BASE_ARGS, *args, f"deployment.address=127.0.0.1:{port}")


def _entries(run: Path) -> list[dict]:
    path = run / "ledger.jsonl"
    return read_ledger(path, effective=True) if path.exists() else []


def _models(run: Path) -> list[dict]:
    return [e for e in _entries(run) if e["event"] == "model"]


def _saved_model(run: Path, experiment) -> GlobalModel:
    params, buffers = read_model_file(run / "model.fct", experiment.layout)
    return GlobalModel(params, buffers, experiment.config.rounds)


def test_killed_server_resumes_past_damaged_checkpoints_to_the_same_model(
    tmp_path: Path,
) -> None:
    """The newest checkpoint holds JSON nested 8,000 deep, the next a flipped byte: both are
    skipped with their reasons. Four clients in full participation get the same cohorts and
    task seeds as the simulation (an uninterrupted run of the same config), before and after
    the crash, and rounds fold in client order whatever the arrival order: the final model
    must be identical."""
    make_certs(tmp_path, 4)
    port = free_port()
    args = ["num_clients=4", "clients_per_round=4", "rounds=8", "deployment.liveness_timeout=30"]
    server = _server(tmp_path, port, *args)
    run = tmp_path / "run"
    wait_for(lambda: (run / "config.yaml").exists(), 60, "the run directory")
    clients = [client(tmp_path, port, i, "--slow", "0.2") for i in range(4)]
    wait_for(lambda: len(_models(run)) >= 4, 120, "model version 4")
    server.kill()
    first_output = server.communicate(timeout=30)[0]
    # The three newest: a kill between a checkpoint's rename and the pruning of the oldest
    # (a busy machine makes that window wide) leaves a fourth.
    newest, second, kept = sorted(
        (p for p in (run / "checkpoints").iterdir() if p.name.startswith("v")), reverse=True
    )[:3]
    assert 3 <= int(newest.name[1:]) < 8, first_output
    nest_state(newest)
    tensors = second / "tensors.fct"
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0xFF
    tensors.write_bytes(bytes(data))

    server = _server(tmp_path, port, *args)
    outputs = [c.communicate(timeout=240)[0] for c in clients]
    server_output = server.communicate(timeout=60)[0]
    assert server.returncode == 0, server_output
    assert f"checkpoint {newest} is unusable" in server_output
    assert "nested deeper than 32" in server_output
    assert f"checkpoint {second} is unusable (tensors.fct does not match the sha256" in (
        server_output
    )
    resumed_from = int(kept.name[1:])
    assert f"from model version {resumed_from}" in server_output
    for process, output in zip(clients, outputs, strict=True):
        assert process.returncode == 0, output
        assert f"server 127.0.0.1:{port} unavailable" in output

    entries = read_ledger(run / "ledger.jsonl", effective=True)
    assert [e["version"] for e in entries if e["event"] == "model"] == list(range(1, 9))
    accepted = [(e["client"], e["base_version"]) for e in entries if e["event"] == "accepted"]
    assert sorted(accepted) == [(c, v) for c in range(4) for v in range(8)]
    assert [e["version"] for e in entries if e["event"] == "resumed"] == [resumed_from]
    assert all(isinstance(e["time"], float) for e in entries if e["event"] != "resumed")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    downs = [row["bytes_down"] for row in rows]
    assert [row["version"] for row in rows] == list(range(1, 9)), rows
    assert downs == sorted(downs) and len(set(downs)) == 8, "byte counts go on after a resume"

    config = yaml.safe_load((run / "config.yaml").read_text())
    experiment = make_experiment(config)
    simulated = Simulation(experiment, config).run().final
    deployed = _saved_model(run, experiment)
    last = [e for e in entries if e["event"] == "model"][-1]
    assert last["sha256"] == model_digest(deployed)
    assert not torch.equal(deployed.params, experiment.initial_model().params)
    assert model_digest(deployed) == model_digest(simulated)


def test_client_killed_mid_round_is_closed_out_at_the_deadline_and_rejoins(
    tmp_path: Path,
) -> None:
    make_certs(tmp_path, 3)
    port = free_port()
    server = _server(
        tmp_path,
        port,
        "num_clients=3",
        "clients_per_round=3",
        "rounds=4",
        "strategy.round_timeout=4.0",
        "deployment.liveness_timeout=10",
    )
    run = tmp_path / "run"
    wait_for(lambda: (run / "config.yaml").exists(), 60, "the run directory")
    steady = [client(tmp_path, port, i) for i in range(2)]
    slow = client(tmp_path, port, 2, "--slow", "0.3")
    wait_for(lambda: len(_models(run)) >= 1, 120, "model version 1")
    slow.kill()
    slow.communicate(timeout=30)
    wait_for(lambda: len(_models(run)) >= 2, 60, "model version 2")
    rejoined = client(tmp_path, port, 2)
    outputs = [c.communicate(timeout=240)[0] for c in [*steady, rejoined]]
    server_output = server.communicate(timeout=60)[0]
    assert server.returncode == 0, server_output
    assert all(c.returncode == 0 for c in [*steady, rejoined]), outputs
    assert "done, 2 updates accepted" in outputs[2]

    entries = read_ledger(run / "ledger.jsonl")
    models = [e for e in entries if e["event"] == "model"]
    assert [(m["version"], m["participants"]) for m in models] == [(1, 3), (2, 2), (3, 3), (4, 3)]
    second = entries.index(models[1])
    lost = [i for i, e in enumerate(entries) if e["event"] == "lost"]
    assert [(entries[i]["client"], entries[i]["version"]) for i in lost] == [(2, 1)]
    assert lost[0] > second, "the round closed at its deadline, before the loss was noticed"
    assert [
        e["base_version"] for e in entries if e["event"] == "accepted" and e["client"] == 2
    ] == [
        0,
        2,
        3,
    ]
    assert sum(e["event"] == "join" and e["client"] == 2 for e in entries) == 2


def test_server_reports_all_clients_gone_and_exits(tmp_path: Path) -> None:
    make_certs(tmp_path, 2)
    port = free_port()
    server = _server(
        tmp_path,
        port,
        "num_clients=2",
        "clients_per_round=2",
        "rounds=500",
        "deployment.liveness_timeout=2",
        "deployment.gone_timeout=2",
    )
    run = tmp_path / "run"
    wait_for(lambda: (run / "config.yaml").exists(), 60, "the run directory")
    clients = [client(tmp_path, port, i) for i in range(2)]
    wait_for(lambda: len(_models(run)) >= 1, 120, "model version 1")
    for process in clients:
        process.kill()
        process.communicate(timeout=30)
    output = server.communicate(timeout=60)[0]
    assert server.returncode == 1, output
    assert "all clients gone; waiting up to 2 s for one to rejoin" in output
    found = re.search(
        r"done: all clients gone: no client connected for 2 s \(at model version (\d+) of 500\)",
        output,
    )
    assert found, output
    summary = yaml.safe_load((run / "summary.json").read_text())
    assert summary["complete"] is False and summary["versions"] == int(found.group(1))


def test_a_client_still_training_when_the_run_ends_stops_instead_of_retrying(
    tmp_path: Path,
) -> None:
    make_certs(tmp_path, 2)
    port = free_port()
    server = _server(
        tmp_path,
        port,
        "strategy=fedasync",
        "num_clients=2",
        "clients_per_round=2",
        "rounds=4",
        "deployment.liveness_timeout=10",
    )
    run = tmp_path / "run"
    wait_for(lambda: (run / "config.yaml").exists(), 60, "the run directory")
    slow = client(tmp_path, port, 1, "--slow", "1.0")
    wait_for(lambda: any(e["event"] == "join" for e in _entries(run)), 120, "the slow client")
    fast = client(tmp_path, port, 0)
    outputs = [c.communicate(timeout=120)[0] for c in (fast, slow)]
    assert server.wait(timeout=60) == 0
    assert fast.returncode == 0 and slow.returncode == 0, outputs
    # Its last update comes too late to count; it then evaluates the final model if the server
    # still waits for that, or hears that the server is gone: either way it stops, no retries.
    assert (
        "; refused: training finished" in outputs[1]
        or "the server finished training while this client was working" in outputs[1]
    ), outputs[1]
    assert "retrying" not in outputs[1], outputs[1]
