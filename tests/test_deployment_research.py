"""FedLD and FedLAW deployed: `fedcore server` and client processes over mutual TLS, two rounds
each (the two federations run side by side), checked against the simulation of the same config."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from fedcore.server.experiment import make_experiment
from fedcore.server.ledger import read_ledger
from fedcore.server.rundir import read_model_file
from fedcore.server.simulation import Simulation
from tests.processes import client, finish_federation, make_certs, server_port, start_server

pytestmark = pytest.mark.slow

COMMON = [
    "dataset=synthetic",
    "model=mlp",
    "rounds=2",
    "training.local_steps=5",
    "output.progress=plain",
    "output.plot=false",
    "evaluation.federated_clients=0",
    "deployment.address=127.0.0.1:0",
    "deployment.heartbeat_seconds=0.5",
    "deployment.liveness_timeout=30",  # liveness is not under test: load must not trip it
]
RUNS = {
    "fedld": (3, ["strategy=fedld", "strategy.margin_lambda=0.1"]),
    "fedlaw": (
        2,
        ["strategy=fedlaw", "server_data.examples_per_class=5", "strategy.server_lr=0.05"],
    ),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both federations run to completion at once; their servers' run directories by strategy."""
    started: dict[str, tuple[Path, subprocess.Popen[str], list[subprocess.Popen[str]]]] = {}
    for name, (clients, overrides) in RUNS.items():
        root = tmp_path_factory.mktemp(name)
        make_certs(root, clients)
        server = start_server(
            root, *COMMON, *overrides, f"num_clients={clients}", f"clients_per_round={clients}"
        )
        port = server_port(server)
        started[name] = (root, server, [client(root, port, i) for i in range(clients)])
    for _, server, processes in started.values():
        finish_federation(server, processes, accepted=2)
    return {name: root / "run" for name, (root, _, _) in started.items()}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_every_update_is_accepted_and_the_model_matches_the_simulation(
    runs: dict[str, Path], name: str
) -> None:
    """FedLD stacks updates in client order, so network arrival order does not matter; FedLAW's
    FedAvg starting point folds in arrival order, so it agrees to float32 rounding."""
    run = runs[name]
    clients = RUNS[name][0]
    entries = read_ledger(run / "ledger.jsonl")
    assert sum(e["event"] == "accepted" for e in entries) == 2 * clients
    assert not [e for e in entries if e["event"] in ("rejected", "lost", "expired")]
    assert [e["version"] for e in entries if e["event"] == "model"] == [1, 2]
    config = yaml.safe_load((run / "config.yaml").read_text())
    experiment = make_experiment(config)
    simulated = Simulation(experiment, config).run().final
    deployed = read_model_file(run / "model.fct", experiment.layout)[0]
    assert not torch.equal(deployed, experiment.initial_model().params)
    assert torch.allclose(deployed, simulated.params, atol=1e-5, rtol=0)


def test_fedlaw_logs_gamma_and_lambda_per_round(runs: dict[str, Path]) -> None:
    models = [e for e in read_ledger(runs["fedlaw"] / "ledger.jsonl") if e["event"] == "model"]
    for model in models:
        lambdas = json.loads(model["lambdas"])
        assert sorted(lambdas) == ["0", "1"]
        assert sum(lambdas.values()) == pytest.approx(1.0, abs=1e-5)
        assert 0.5 <= model["gamma"] <= 1.0
        assert model["proxy_loss"] <= model["proxy_loss_fedavg"]
    rows = [
        json.loads(line)
        for line in (runs["fedlaw"] / "metrics.jsonl").read_text().split("\n")
        if line
    ]
    assert [row["version"] for row in rows] == [1, 2] and all("gamma" in row for row in rows)
