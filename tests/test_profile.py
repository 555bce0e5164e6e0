"""A deployed client's device profile and calibration, its library check, and `fedcore clients`."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from functools import partial
from importlib import metadata
from pathlib import Path

import pytest
import torch
from torch import nn

from fedcore.clients import profile
from fedcore.clients.profile import (
    calibrate,
    calibration_task,
    cpu_model,
    device_profile,
    memory_bytes,
    profile_line,
)
from fedcore.clients.stack import Library, MissingLibraries, check_client_stack, missing_libraries
from fedcore.clients.trainer import LocalTrainer
from fedcore.config import TrainingConfig
from fedcore.data import load_dataset
from fedcore.models import build_model
from fedcore.server.roster import format_roster, roster

REPO = Path(__file__).resolve().parents[1]
#: The known cost of a SteppedLinear forward pass on the test clock, in seconds.
STEP_COST = 0.004


class ManualClock:
    """A clock that only moves when told to: calibration is checked against known costs, so
    no load on the machine can change what it measures."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class SteppedLinear(nn.Module):
    """A linear classifier whose forward pass advances `clock` by STEP_COST: a known step
    cost."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__()
        self.linear = nn.Linear(20, 10)
        self.clock = clock

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.clock.now += STEP_COST
        return self.linear(x)


def test_calibrate_times_the_requested_steps_after_one_warm_up_step() -> None:
    calls: list[int] = []
    clock = ManualClock()

    def train(steps: int) -> None:
        calls.append(steps)
        clock.now += 0.01 * steps + (5.0 if len(calls) == 1 else 0.0)  # a slow first step

    seconds = calibrate(train, steps=3, clock=clock)
    assert calls == [1, 3]
    assert seconds == pytest.approx(0.01)
    with pytest.raises(ValueError, match=">= 1 step"):
        calibrate(train, steps=0)


def test_calibration_of_real_training_is_per_step_and_independent_of_the_step_count() -> None:
    """LocalTrainer on a model whose step costs STEP_COST on the test clock: seconds per step
    is that cost whether 3 or 12 steps are timed (so the total scales with the steps)."""
    dataset = load_dataset("synthetic", num_train=200, num_test=10)
    clock = ManualClock()
    trainer = LocalTrainer(partial(SteppedLinear, clock))
    params, buffers = trainer.bound.params.clone(), trainer.bound.buffers.clone()
    training = TrainingConfig(batch_size=16)

    def per_step(steps: int) -> float:
        return calibrate(
            lambda n: trainer.run(calibration_task(training, n), params, buffers, dataset.train),
            steps,
            clock,
        )

    assert per_step(3) == pytest.approx(STEP_COST)
    assert per_step(12) == pytest.approx(STEP_COST)


def test_calibration_task_uses_the_experiment_hyper_parameters_and_fixed_steps() -> None:
    training = TrainingConfig(local_steps=50, local_epochs=2.0, batch_size=8, lr=0.3)
    task = calibration_task(training, 4)
    assert task.local_steps == 4
    assert task.hyper["epochs"] == 0.0  # steps, not epochs, whatever the experiment says
    assert task.hyper["batch_size"] == 8 and task.hyper["lr"] == 0.3
    assert calibration_task(training, 4).seed == task.seed


def test_device_profile_fields_are_present_and_typed() -> None:
    dataset = load_dataset("synthetic", num_train=100, num_test=10)
    trainer = LocalTrainer(partial(build_model, "mlp", dataset.info))
    params, buffers = trainer.bound.params.clone(), trainer.bound.buffers.clone()
    seconds = calibrate(
        lambda n: trainer.run(calibration_task(TrainingConfig(), n), params, buffers, dataset.train)
    )
    made = device_profile(torch.device("cpu"), seconds)
    assert made.architecture == platform.machine()
    assert made.device_type == "cpu"
    assert made.device_name == cpu_model() and made.device_name
    assert made.cores == os.cpu_count()
    assert made.memory_bytes == memory_bytes() > 0
    assert made.device_memory_bytes == 0
    assert made.step_seconds == seconds > 0
    libraries = dict(made.libraries)
    assert libraries["python"] == platform.python_version()
    for distribution in ("torch", "numpy", "grpcio", "protobuf", "PyYAML", "omegaconf"):
        assert libraries[distribution] == metadata.version(distribution)
    line = profile_line(made)
    assert platform.machine() in line and "ms/step" in line


def test_memory_bytes_matches_the_kernel_page_count() -> None:
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert abs(memory_bytes() - pages) < 64 * 2**20


@pytest.mark.parametrize(
    ("machine", "cpuinfo", "expected"),
    [
        ("x86_64", {"vendor_id": "GenuineIntel", "model name": "Xeon"}, "Xeon"),
        ("riscv64", {"isa": "rv64imafdc", "uarch": "sifive,u74-mc"}, "sifive,u74-mc"),
        ("riscv64", {"isa": "rv64imafdcv"}, "rv64imafdcv"),
        (
            "riscv64",
            {"vendor_id": "GenuineIntel", "model name": "Xeon"},
            "Xeon (emulating riscv64)",
        ),
        ("aarch64", {"CPU implementer": "0x41"}, "aarch64"),
    ],
)
def test_cpu_model_reads_each_architecture_and_flags_emulation(
    monkeypatch: pytest.MonkeyPatch, machine: str, cpuinfo: dict[str, str], expected: str
) -> None:
    monkeypatch.setattr(profile, "_cpuinfo", lambda: cpuinfo)
    monkeypatch.setattr(platform, "machine", lambda: machine)
    monkeypatch.setattr(platform, "processor", lambda: "")
    assert cpu_model() == expected


def test_the_library_check_names_each_missing_package_and_its_installs() -> None:
    check_client_stack()  # this machine has the whole client stack
    absent = (
        Library("fedcore_no_such_module", "nosuch", "python3-nosuch", "nosuch>=1"),
        Library("nosuchparent.sub", "nosub", "python3-nosub", "nosub>=2"),
        Library("json", "json", "python3", "json"),
    )
    assert [lib.distribution for lib in missing_libraries(absent)] == ["nosuch", "nosub"]
    with pytest.raises(MissingLibraries) as raised:
        check_client_stack(absent)
    message = str(raised.value)
    assert "apt-get install python3-nosuch" in message and "pip install 'nosuch>=1'" in message
    assert "apt-get install python3-nosub" in message
    assert "json" not in message


def test_fedcore_client_without_grpc_names_it_and_exits_1(tmp_path: Path) -> None:
    """`sys.modules[name] = None` hides an installed module from find_spec and import alike."""
    script = (
        "import sys; sys.modules['grpc'] = None; sys.modules['yaml'] = None\n"
        "from fedcore.cli import main\n"
        "main(['client', '--server', 'x:1', '--id', 'c', '--certs', '.', '--config', 'c.yaml'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert done.returncode == 1
    assert "grpcio (import grpc): apt-get install python3-grpcio" in done.stderr
    assert "PyYAML (import yaml): apt-get install python3-yaml" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_client_import_path_needs_nothing_the_riscv_userland_lacks() -> None:
    """Importing every client module pulls in no package Debian's riscv64 userland lacks."""
    script = (
        "import sys\n"
        "import fedcore.cli, fedcore.clients.main, fedcore.clients.agent, fedcore.clients.device\n"
        "import fedcore.clients.profile\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    loaded = set(done.stdout.split())
    assert {"torch", "grpc", "numpy", "fedcore"} <= loaded
    assert not loaded & {"hydra", "matplotlib", "opacus", "pandas", "rich", "psutil", "tqdm"}


def _ledger(path: Path, entries: list[dict[str, object]]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    with (path / "ledger.jsonl").open("w", encoding="utf-8") as out:
        for entry in entries:
            out.write(json.dumps(entry) + "\n")
    return path


PROFILE_RV = {
    "architecture": "riscv64",
    "device": "cpu",
    "device_name": "sifive,u74-mc",
    "cores": 4,
    "memory_bytes": 16 * 2**30,
    "step_seconds": 0.25,
    "libraries": {"python": "3.13.5", "torch": "2.6.0+debian"},
}
PROFILE_GPU = {
    "architecture": "x86_64",
    "device": "cuda",
    "device_name": "NVIDIA H100",
    "cores": 16,
    "memory_bytes": 128 * 2**30,
    "step_seconds": 0.002,
    "libraries": {"python": "3.11.7", "torch": "2.13.0"},
}


def test_roster_keeps_the_latest_profile_and_counts_accepted_steps(tmp_path: Path) -> None:
    entries = [
        {"event": "join", "client": 1, "name": "rv", "profile": {**PROFILE_RV, "cores": 2}},
        {"event": "join", "client": 0, "name": "gpu", "profile": PROFILE_GPU},
        {"event": "accepted", "client": 0, "steps": 20},
        {"event": "accepted", "client": 1, "steps": 3},
        {"event": "rejected", "client": 1, "steps": 9},
        {"event": "join", "client": 1, "name": "rv", "profile": PROFILE_RV},
        {"event": "accepted", "client": 1, "steps": 5},
        {"event": "model", "version": 1},
    ]
    clients = roster(entries)
    assert [(c.number, c.name, c.joins, c.accepted_steps) for c in clients] == [
        (0, "gpu", 1, [20]),
        (1, "rv", 2, [3, 5]),
    ]
    assert clients[1].profile["cores"] == 4
    lines = format_roster(clients).splitlines()
    assert lines[0].split() == [
        "#", "client", "arch", "device", "name", "cores", "memory", "ms/step",
        "accepted", "steps", "python", "torch",
    ]  # fmt: skip
    assert lines[1].split() == [
        "0", "gpu", "x86_64", "cuda", "NVIDIA", "H100", "16", "128.0", "GiB", "2.00",
        "1", "20", "3.11.7", "2.13.0",
    ]  # fmt: skip
    assert lines[2].split() == [
        "1", "rv", "riscv64", "cpu", "sifive,u74-mc", "4", "16.0", "GiB", "250.00",
        "2", "3-5", "3.13.5", "2.6.0+debian",
    ]  # fmt: skip


def test_fedcore_clients_prints_the_table_and_refuses_a_folder_without_ledger(
    tmp_path: Path,
) -> None:
    run = _ledger(
        tmp_path / "run",
        [{"event": "join", "client": 0, "name": "rv", "profile": PROFILE_RV}],
    )
    command = [sys.executable, "-m", "fedcore.cli", "clients"]
    shown = subprocess.run([*command, str(run)], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "riscv64" in shown.stdout and "250.00" in shown.stdout
    missing = subprocess.run([*command, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no ledger" in missing.stderr
