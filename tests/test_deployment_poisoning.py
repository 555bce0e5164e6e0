"""One poisoner among four deployed clients, with no tuning: FedAvg's defaults (each update
shrunk to the recent median norm, example counts capped by what the client declared) keep the
model within 2 points of the honest run's accuracy; without them each attack costs over 10."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from benchmarks.poisoning import OVERRIDES, accuracy
from fedcore.server.ledger import read_ledger
from tests.processes import (
    PLUGIN_ENV,
    client,
    client_args,
    finish_federation,
    make_certs,
    server_port,
    spawn,
    start_server,
)

pytestmark = pytest.mark.slow

SERVER_ARGS = [
    *OVERRIDES,
    "output.progress=plain",
    "output.plot=false",
    "deployment.address=127.0.0.1:0",
    "deployment.heartbeat_seconds=0.5",
]


def _accuracy(summary: dict[str, object]) -> float:
    final = summary["final"]
    assert isinstance(final, dict)
    return float(final["test_accuracy"])


@pytest.mark.parametrize("attack", ["flip10", "count", "huge"])
def test_one_poisoner_of_four_leaves_default_fedavg_within_two_points(
    attack: str, tmp_path: Path
) -> None:
    make_certs(tmp_path, 4)
    server = start_server(tmp_path, *SERVER_ARGS)
    port = server_port(server)
    attacker = spawn(
        [sys.executable, "-m", "tests.poison_client", attack, *client_args(tmp_path, port, 0)],
        tmp_path,
        env=PLUGIN_ENV,
    )
    honest_clients = [client(tmp_path, port, i) for i in (1, 2, 3)]
    finish_federation(server, [attacker, *honest_clients], accepted=20)
    run = tmp_path / "run"
    attacked = _accuracy(json.loads((run / "summary.json").read_text()))

    config = yaml.safe_load((run / "config.yaml").read_text())
    honest = accuracy(config, None, defended=True)
    assert attacked >= honest - 0.02, (attack, attacked, honest)

    entries = read_ledger(run / "ledger.jsonl")
    if attack == "count":
        capped = [e for e in entries if e["event"] == "accepted" and e["client"] == 0]
        assert capped and all("examples_capped" in e for e in capped)
    else:
        assert all(e["shrunk"] >= 1 for e in entries if e["event"] == "model")

    assert accuracy(config, attack, defended=False) < honest - 0.1, "undefended, it must bite"
