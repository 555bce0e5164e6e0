"""`fedcore server` and `fedcore client` as real processes over mutual TLS on loopback."""

from __future__ import annotations

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

SERVER_ARGS = [
    "dataset=synthetic",
    "model=mlp",
    "num_clients=4",
    "clients_per_round=4",
    "rounds=3",
    "training.local_steps=5",
    "output.progress=plain",
    "evaluation.federated_clients=2",
    "deployment.address=127.0.0.1:0",
    "deployment.heartbeat_seconds=0.5",
    "deployment.liveness_timeout=3.0",
]


@pytest.fixture(scope="module")
def federation_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One server and four clients, run to completion; returns the server's run directory."""
    root = tmp_path_factory.mktemp("deploy")
    make_certs(root, 4)
    server = start_server(root, *SERVER_ARGS)
    port = server_port(server)
    finish_federation(server, [client(root, port, i) for i in range(4)], accepted=3)
    return root / "run"


def test_federation_over_mutual_tls_completes_with_every_update_accepted(
    federation_run: Path,
) -> None:
    entries = read_ledger(federation_run / "ledger.jsonl")
    assert sum(e["event"] == "accepted" for e in entries) == 12
    assert not [e for e in entries if e["event"] in ("rejected", "refused", "lost")]
    assert [e["version"] for e in entries if e["event"] == "model"] == [1, 2, 3]
    joins = [e for e in entries if e["event"] == "join"]
    assert sorted(e["name"] for e in joins) == [f"client-{i}" for i in range(4)]
    assert all(e["profile"]["step_seconds"] > 0 for e in joins)


def test_deployment_reaches_the_simulation_model(federation_run: Path) -> None:
    """Same config and seed: same cohorts, task seeds and local training; FedAvg folds the four
    fp32 updates in network arrival order instead of the simulation's event order, so the
    models agree to float32 rounding (1e-6), not bit for bit."""
    config = yaml.safe_load((federation_run / "config.yaml").read_text())
    experiment = make_experiment(config)
    simulated = Simulation(experiment, config).run().final
    deployed, _ = read_model_file(federation_run / "model.fct", experiment.layout)
    assert not torch.equal(deployed, experiment.initial_model().params)
    assert torch.allclose(deployed, simulated.params, atol=1e-6, rtol=0)
