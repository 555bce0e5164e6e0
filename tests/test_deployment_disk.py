"""A full disk under a live server: the failing write is retried, then the run stops cleanly
with one line (no traceback, no half-written ledger line, a checkpoint that verifies), and the
same command resumes it once space is freed, to the simulation's model bit for bit."""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from fedcore.server.checkpoints import CheckpointStore
from fedcore.server.coordinator import model_digest
from fedcore.server.experiment import make_experiment
from fedcore.server.ledger import read_ledger
from fedcore.server.rundir import read_model_file
from fedcore.server.simulation import Simulation
from fedcore.strategies.base import GlobalModel
from tests.processes import client, free_port, make_certs, start_server, wait_for

pytestmark = pytest.mark.slow

ARGS = [
    "dataset=synthetic",
    "model=mlp",
    "num_clients=2",
    "clients_per_round=2",
    "rounds=12",
    "training.local_steps=5",
    "output.progress=plain",
    "output.plot=false",
    "evaluation.federated_clients=0",
    "deployment.heartbeat_seconds=0.5",
    "deployment.liveness_timeout=30",  # liveness is not under test: load must not trip it
    "deployment.checkpoint_every=1",
]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted at tmp_path/run (the server's run directory)."""
    mount = tmp_path / "run"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: Path) -> Path:
    """Write a file until the file system is full; return it."""
    filler = directory / "filler"
    chunk = b"\0" * (64 << 10)
    with filler.open("wb", buffering=0) as handle:
        while True:
            try:
                handle.write(chunk)
            except OSError as error:
                assert error.errno == errno.ENOSPC
                return filler


def _models(run: Path) -> list[dict]:
    return [e for e in read_ledger(run / "ledger.jsonl", effective=True) if e["event"] == "model"]


def test_a_full_disk_stops_the_run_cleanly_and_it_resumes_once_space_is_freed(
    tmp_path: Path, small_disk: Path
) -> None:
    make_certs(tmp_path, 2)
    port = free_port()
    address = f"deployment.address=127.0.0.1:{port}"
    server = start_server(tmp_path, *ARGS, address)
    wait_for(lambda: (small_disk / "ledger.jsonl").exists(), 60, "the run directory")
    clients = [client(tmp_path, port, i, "--slow", "0.05") for i in range(2)]
    wait_for(lambda: len(_models(small_disk)) >= 3, 120, "model version 3")
    filler = _fill(small_disk)
    output = server.communicate(timeout=60)[0]
    assert server.returncode == 1, output
    assert "Traceback" not in output, output
    stop_line = output.strip().splitlines()[-1]
    assert "No space left on device" in stop_line and "to resume" in stop_line, output
    stopped_at = len(_models(small_disk))
    assert 3 <= stopped_at < 12, output

    entries = read_ledger(small_disk / "ledger.jsonl")  # every line whole JSON
    assert [e["version"] for e in entries if e["event"] == "model"] == list(
        range(1, stopped_at + 1)
    )
    config = yaml.safe_load((small_disk / "config.yaml").read_text())
    experiment = make_experiment(config)
    newest = CheckpointStore(small_disk / "checkpoints").load_latest(experiment.layout, print)
    assert newest is not None and 1 <= newest.model.version <= stopped_at
    assert not [p for p in (small_disk / "checkpoints").iterdir() if p.name.startswith(".")]

    filler.unlink()
    server = start_server(tmp_path, *ARGS, address)
    outputs = [c.communicate(timeout=240)[0] for c in clients]
    resumed = server.communicate(timeout=60)[0]
    assert server.returncode == 0, resumed
    assert f"from model version {newest.model.version}" in resumed, resumed
    for process, text in zip(clients, outputs, strict=True):
        assert process.returncode == 0, text

    assert [e["version"] for e in _models(small_disk)] == list(range(1, 13))
    params, buffers = read_model_file(small_disk / "model.fct", experiment.layout)
    simulated = Simulation(experiment, config).run().final
    assert model_digest(GlobalModel(params, buffers, 12)) == model_digest(simulated)
