"""`fedcore server` and `fedcore client` as real processes over mutual TLS on loopback."""

from __future__ import annotations

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
    "deployment.liveness_timeout=30",  # liveness is not under test: load must not trip it
]


@pytest.fixture(scope="module")
def federation_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One server and four clients (client 3 the slowest), run to completion; returns the
    server's run directory."""
    root = tmp_path_factory.mktemp("deploy")
    make_certs(root, 4)
    server = start_server(root, *SERVER_ARGS)
    port = server_port(server)
    finish_federation(server, _clients(root, port, slow=3), accepted=3)
    return root / "run"


def _clients(root: Path, port: int, slow: int) -> list[subprocess.Popen[str]]:
    """The four clients, client `slow` slowed so that it returns last in every round."""
    return [client(root, port, i, *(["--slow", "0.3"] if i == slow else [])) for i in range(4)]


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
    assert all(e["examples"] > 0 for e in joins), "partition sizes, not the 0 clients declare"
    times = [e["time"] for e in entries]
    assert times == sorted(times) and times[-1] > 0, "every entry carries the run's time"


def _arrivals(run: Path) -> list[list[int]]:
    """Each round's accepted clients in the order the server received them."""
    entries = read_ledger(run / "ledger.jsonl")
    accepted = [e for e in entries if e["event"] == "accepted"]
    return [[e["client"] for e in accepted if e["base_version"] == v] for v in range(3)]


def test_deployment_is_the_simulation_bit_for_bit_in_any_arrival_order(
    federation_run: Path, tmp_path: Path
) -> None:
    """Same config and seed: same cohorts, task seeds and local training, and rounds fold in
    client order; a second run whose client 0 is slowed (so it arrives last, not first) gives
    the model sha256 of the first run (client 3 last) and of the simulation."""
    make_certs(tmp_path, 4)
    server = start_server(tmp_path, *SERVER_ARGS)
    port = server_port(server)
    finish_federation(server, _clients(tmp_path, port, slow=0), accepted=3)
    reordered = tmp_path / "run"
    assert [order[-1] for order in _arrivals(federation_run)] == [3, 3, 3]
    assert [order[-1] for order in _arrivals(reordered)] == [0, 0, 0]

    config = yaml.safe_load((federation_run / "config.yaml").read_text())
    experiment = make_experiment(config)
    simulated = model_digest(Simulation(experiment, config).run().final)
    for run in (federation_run, reordered):
        params, buffers = read_model_file(run / "model.fct", experiment.layout)
        assert not torch.equal(params, experiment.initial_model().params)
        assert model_digest(GlobalModel(params, buffers, 3)) == simulated
