"""FedAMD deployed: `fedcore server` and three client processes over mutual TLS for three rounds
(anchors, miners carrying the direction as a task extra, anchors), checked against the
simulation of the same config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from fedcore.server.experiment import make_experiment
from fedcore.server.ledger import read_ledger
from fedcore.server.rundir import read_model_file
from fedcore.server.simulation import Simulation
from fedcore.strategies.fedamd import FedAMD
from tests.processes import client, finish_federation, make_certs, server_port, start_server

pytestmark = pytest.mark.slow

CLIENTS = 3
SERVER_ARGS = [
    "dataset=synthetic",
    "model=mlp",
    f"num_clients={CLIENTS}",
    f"clients_per_round={CLIENTS}",
    "rounds=3",
    "training.local_steps=5",
    "strategy=fedamd",
    "strategy.anchor_period=2",
    "strategy.anchor_batch=100",
    "output.progress=plain",
    "output.plot=false",
    "evaluation.federated_clients=0",
    "deployment.address=127.0.0.1:0",
    "deployment.heartbeat_seconds=0.5",
    "deployment.liveness_timeout=3.0",
]


@pytest.fixture(scope="module")
def federation_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One server and three clients, run to completion; returns the server's run directory."""
    root = tmp_path_factory.mktemp("deploy-fedamd")
    make_certs(root, CLIENTS)
    server = start_server(root, *SERVER_ARGS)
    port = server_port(server)
    finish_federation(server, [client(root, port, i) for i in range(CLIENTS)], accepted=3)
    return root / "run"


def test_fedamd_rounds_over_mutual_tls_accept_every_anchor_and_miner(federation_run: Path) -> None:
    entries = read_ledger(federation_run / "ledger.jsonl")
    assert sum(e["event"] == "accepted" for e in entries) == 3 * CLIENTS
    assert not [e for e in entries if e["event"] in ("rejected", "refused", "lost")]
    assert [e["version"] for e in entries if e["event"] == "model"] == [1, 2, 3]


def test_deployed_fedamd_reaches_the_simulation_model(
    federation_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Round 1's anchors leave the model unchanged; round 2's miners start from the mean anchor
    gradient, which reaches them only as a task extra over gRPC (without it they would run plain
    SGD); round 3's anchors leave it unchanged again."""
    config = yaml.safe_load((federation_run / "config.yaml").read_text())
    experiment = make_experiment(config)
    simulated = Simulation(experiment, config).run().final
    deployed, _ = read_model_file(federation_run / "model.fct", experiment.layout)
    assert not torch.equal(deployed, experiment.initial_model().params)
    assert torch.allclose(deployed, simulated.params, atol=1e-6, rtol=0)

    monkeypatch.setattr(FedAMD, "direction", lambda self: None)
    undirected = Simulation(make_experiment(config), config).run().final
    assert not torch.allclose(deployed, undirected.params, atol=1e-4), "the direction matters"
