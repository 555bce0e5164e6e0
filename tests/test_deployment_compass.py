"""FedCompass deployed: `fedcore server` and four `fedcore client` processes over mutual TLS,
slowed on purpose by different amounts (`--slow`, seconds of sleep per local step)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from fedcore.server.ledger import read_ledger
from tests.processes import client, finish_federation, make_certs, server_port, start_server

pytestmark = pytest.mark.slow

#: Seconds slept per local step by clients 0..3: an 8x spread on one machine.
SLOW = (0.005, 0.01, 0.02, 0.04)


@pytest.fixture(scope="module")
def compass_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One FedCompass server and four clients of different speeds, run to completion."""
    root = tmp_path_factory.mktemp("compass")
    make_certs(root, 4)
    server = start_server(
        root,
        "strategy=fedcompass",
        "strategy.max_local_steps=40",
        "strategy.min_local_steps=4",
        "dataset=synthetic",
        "model=mlp",
        "model.options.hidden=[16]",
        "num_clients=4",
        "clients_per_round=4",
        "rounds=24",
        "output.progress=plain",
        "evaluation.every=100",
        "evaluation.federated_clients=0",
        "deployment.address=127.0.0.1:0",
        "deployment.heartbeat_seconds=0.5",
        "deployment.liveness_timeout=30",  # not under test: load must not trip it
    )
    port = server_port(server)
    clients = [client(root, port, i, "--slow", str(SLOW[i])) for i in range(4)]
    finish_federation(server, clients, timeout=120)
    return root / "run"


def test_ledger_shows_group_aggregations_and_per_client_step_counts(compass_run: Path) -> None:
    entries = read_ledger(compass_run / "ledger.jsonl")
    models = [e for e in entries if e["event"] == "model"]
    assert [m["version"] for m in models] == list(range(1, 25))
    assert all({"group", "clients", "steps", "staleness"} <= set(m) for m in models)
    groups = [m for m in models if len(m["members"]) >= 2]
    assert groups, "no group aggregated two or more on-time members"
    accepted = [e for e in entries if e["event"] == "accepted"]
    applied = sum(m["updates"] for m in models)
    assert applied <= len(accepted), "an update was applied more than once"
    steps: dict[int, list[int]] = defaultdict(list)
    for entry in accepted:
        steps[entry["client"]].append(entry["steps"])
    assert set(steps) == {0, 1, 2, 3}
    # Once the estimates have settled, the fastest client trains more steps than the slowest.
    settled = {c: sorted(s[2:])[len(s[2:]) // 2] for c, s in steps.items() if len(s) > 2}
    assert 0 in settled and 3 in settled, steps
    assert settled[0] > settled[3], steps
    # A group's members got different step counts that bring them back together.
    assert any(len(set(m["steps"][-len(m["members"]) :])) > 1 for m in groups), groups
