"""A real riscv64 client in a federation: Debian trixie's riscv64 Python 3.13 + torch 2.6 under
qemu-riscv64-static (natively on riscv64 hardware), next to an x86-64 client on this machine.

The userland is built or reused by scripts/riscv/userland.sh (about 30 s and 600 MB the first
time, cached outside the tree); the emulated client spends 15-60 s in `import torch`. The
dataset is `synthetic`: it is generated from the seed, so the emulated client needs no data
package; a pip data carrier such as MNIST's lives in the host's virtual environment, which the
riscv64 interpreter deliberately cannot see (its x86-64 packages would not load there).
Set FEDCORE_SKIP_RISCV=1 to skip (say, on a machine that cannot reach a Debian mirror).
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from fedcore.server.experiment import make_experiment
from fedcore.server.ledger import read_ledger
from fedcore.server.rundir import read_model_file
from fedcore.server.simulation import Simulation
from fedcore.strategies.registry import STRATEGIES
from tests.processes import (
    client,
    client_args,
    make_certs,
    server_port,
    spawn,
    start_server,
    wait_for,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RISCV = REPO / "scripts" / "riscv"
CLIENT_SECONDS = 420  # emulated start-up (~15-60 s for `import torch`) plus the rounds
SERVER_ARGS = [
    "dataset=synthetic",
    "model=mlp",
    "num_clients=2",
    "clients_per_round=2",
    "training.local_steps=5",
    "output.progress=plain",
    "evaluation.federated_clients=2",
    "deployment.address=127.0.0.1:0",
    # The server waits 2 heartbeats after the last version for clients to hear DONE: enough
    # for the emulated client to finish the upload it may be in the middle of.
    "deployment.heartbeat_seconds=3.0",
    "deployment.liveness_timeout=20.0",
]


@pytest.fixture(scope="module")
def userland() -> None:
    """The riscv64 userland, built or reused (nothing to build on riscv64 hardware)."""
    if os.environ.get("FEDCORE_SKIP_RISCV"):
        pytest.skip("FEDCORE_SKIP_RISCV is set")
    if platform.machine() == "riscv64":
        return
    built = subprocess.run(
        ["bash", str(RISCV / "userland.sh")], capture_output=True, text=True, timeout=1200
    )
    if built.returncode != 0:
        pytest.fail(f"scripts/riscv/userland.sh failed:\n{built.stderr[-4000:]}")


def _federation(
    root: Path, *overrides: str, x86_options: tuple[str, ...] = ()
) -> tuple[Path, list[str]]:
    """Server, riscv64 client-1 and, once that has joined, x86-64 client-0 (which would
    otherwise finish an asynchronous run before the emulated client is up; `x86_options` are
    its extra options), to completion: the run folder and the outputs of riscv64 client, x86
    client and server."""
    make_certs(root, 2)
    server = start_server(root, *SERVER_ARGS, *overrides)
    port = server_port(server)
    riscv = spawn(["bash", str(RISCV / "client.sh"), *client_args(root, port, 1)], root)
    ledger = root / "run" / "ledger.jsonl"

    def riscv_joined() -> bool:
        assert riscv.poll() is None, f"riscv64 client exited early:\n{riscv.communicate()[0]}"
        return ledger.exists() and '"name":"client-1"' in ledger.read_text()

    x86: subprocess.Popen[str] | None = None
    try:
        wait_for(riscv_joined, CLIENT_SECONDS, "the riscv64 client to join")
        x86 = client(root, port, 0, *x86_options)
        server_output = server.communicate(timeout=CLIENT_SECONDS)[0]
        outputs = [riscv.communicate(timeout=60)[0], x86.communicate(timeout=60)[0], server_output]
    finally:
        for process in (riscv, x86, server):
            if process is not None:
                process.kill()
    for process, output in zip((riscv, x86, server), outputs, strict=True):
        assert process.returncode == 0, output
    return root / "run", outputs


@pytest.fixture(scope="module")
def fedavg_run(userland: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three FedAvg rounds with both clients in every cohort."""
    run, outputs = _federation(
        tmp_path_factory.mktemp("riscv-fedavg"), "strategy=fedavg", "rounds=3"
    )
    assert "client-1: done, 3 updates accepted" in outputs[0]
    return run


def test_riscv64_client_joins_with_its_profile_and_its_updates_are_aggregated(
    fedavg_run: Path,
) -> None:
    entries = read_ledger(fedavg_run / "ledger.jsonl")
    joins = {e["name"]: e for e in entries if e["event"] == "join"}
    riscv, x86 = joins["client-1"], joins["client-0"]
    assert riscv["profile"]["architecture"] == "riscv64"
    assert x86["profile"]["architecture"] == platform.machine()
    assert riscv["profile"]["libraries"]["python"].startswith("3.13.")
    assert riscv["profile"]["libraries"]["torch"].startswith("2.6.")
    assert riscv["profile"]["libraries"]["grpcio"] == "1.51.1"
    assert riscv["profile"]["libraries"]["protobuf"] == "4.21.12"
    if platform.machine() != "riscv64":
        assert riscv["profile"]["device_name"].endswith("(emulating riscv64)")
    assert riscv["profile"]["step_seconds"] > 0 and x86["profile"]["step_seconds"] > 0
    accepted = [e for e in entries if e["event"] == "accepted" and e["client"] == riscv["client"]]
    assert [e["base_version"] for e in accepted] == [0, 1, 2]
    assert all(e["steps"] == 5 and e["staleness"] == 0 for e in accepted)
    assert not [e for e in entries if e["event"] in ("rejected", "refused", "lost", "expired")]
    models = [e for e in entries if e["event"] == "model"]
    assert [(e["version"], e["participants"]) for e in models] == [(1, 2), (2, 2), (3, 2)]


def test_the_model_with_a_riscv64_client_is_the_x86_simulation_up_to_rounding(
    fedavg_run: Path,
) -> None:
    """The same config simulated here: same cohorts, task seeds and (CPU-generator) batches, so
    the riscv64 client's torch 2.6 updates differ from x86-64 torch's only by rounding."""
    config = yaml.safe_load((fedavg_run / "config.yaml").read_text())
    experiment = make_experiment(config)
    simulated = Simulation(experiment, config).run().final
    deployed, _ = read_model_file(fedavg_run / "model.fct", experiment.layout)
    moved = (simulated.params - experiment.initial_model().params).abs().max()
    assert moved > 1e-3
    assert torch.allclose(deployed, simulated.params, atol=1e-5, rtol=0)


def test_fedcore_clients_lists_the_riscv64_client(fedavg_run: Path) -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "fedcore.cli", "clients", str(fedavg_run)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = {line.split()[1]: line.split() for line in shown.stdout.splitlines()[1:]}
    assert rows["client-1"][2:4] == ["riscv64", "cpu"]
    assert rows["client-0"][2] == platform.machine()


@pytest.mark.skipif("fedcompass" not in STRATEGIES, reason="strategy fedcompass not registered yet")
def test_fedcompass_gives_the_slow_riscv64_client_fewer_local_steps(
    userland: None, tmp_path: Path
) -> None:
    """The emulated client's profile (~25x slower per step) is FedCompass's first estimate, so
    in groups with the x86-64 client it gets far fewer than the 100 steps the x86-64 one gets.
    A client that opens a group alone gets Q_max, so the comparison is of steps per task on
    average over the run, not of every task. The x86-64 client sleeps 4 ms a step: a group of
    its 100 steps then lasts long enough for the emulated client to join it with at least
    `min_local_steps` even when a busy machine slows emulation further, instead of opening
    groups of its own (at Q_max) while a bare x86-64 client runs the whole run in a second."""
    run, _ = _federation(
        tmp_path,
        "strategy=fedcompass",
        "strategy.max_local_steps=100",
        "strategy.min_local_steps=5",
        "rounds=30",
        x86_options=("--slow", "0.004"),
    )
    entries = read_ledger(run / "ledger.jsonl")
    numbers = {e["name"]: e["client"] for e in entries if e["event"] == "join"}

    def steps(name: str) -> list[int]:
        return [
            e["steps"] for e in entries if e["event"] == "accepted" and e["client"] == numbers[name]
        ]

    riscv, x86 = steps("client-1"), steps("client-0")
    assert len(riscv) >= 2 and x86, (riscv, x86)
    assert statistics.mean(riscv) < 0.8 * statistics.mean(x86), (riscv, x86)
