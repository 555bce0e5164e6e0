"""DP-SGD through Opacus (`clients/techniques/dpsgd.py`, `privacy.mode=dpsgd`): it is plain
training when clipping and noise are off, its noise has the std it claims, the batches and the
noise come from the client's private stream, each client's ε is Opacus's, and what cannot be
made private fails at start."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from functools import partial

import pytest
import torch
from torch import nn

from fedcore.clients.trainer import LocalTrainer, keyed_by_run
from fedcore.config import EvaluationConfig, ExperimentConfig, PrivacyConfig, TrainingConfig
from fedcore.data import load_dataset
from fedcore.data.split import Split
from fedcore.models import build_model
from fedcore.payloads import DenseDelta
from fedcore.records import Task
from fedcore.server.ledger import read_ledger
from fedcore.server.privacy_accounting import PrivacyAccountant
from fedcore.server.simulation import simulate
from tests.conftest import FAST, PRIVATE_FAST, composed, fails_at_start, repeatable_run
from tests.processes import (
    TWO_CLIENTS,
    client,
    finish_federation,
    make_certs,
    server_port,
    start_server,
)

pytest.importorskip("opacus")

SYNTHETIC = load_dataset("synthetic")
HYPER = {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}


def _delta(trainer: LocalTrainer, task: Task, data: Split) -> torch.Tensor:
    """The delta `task` makes from the trainer's initial weights."""
    start = getattr(trainer, "initial", None)
    if start is None:
        start = trainer.initial = trainer.bound.params.clone()  # type: ignore[attr-defined]
    update = trainer.run(task, start.clone(), torch.zeros(0), data)
    assert isinstance(update.payload, DenseDelta)
    return update.payload.values


@pytest.mark.parametrize("ghost", [1.0, 0.0])
def test_without_clipping_or_noise_it_is_plain_training(ghost: float) -> None:
    """A batch of every example (rate 1) and a bound no gradient reaches: the same steps."""
    data = SYNTHETIC.train.subset(torch.arange(50))
    trainer = LocalTrainer(
        partial(build_model, "mlp", SYNTHETIC.info), private_seed=keyed_by_run(0)
    )
    full = {**HYPER, "batch_size": 50.0}
    plain = _delta(trainer, Task(0, 0, "sgd", 5, full), data)
    private = {**full, "max_grad_norm": 1e6, "noise_multiplier": 0.0, "ghost": ghost}
    assert torch.allclose(_delta(trainer, Task(0, 0, "dpsgd", 5, private), data), plain, atol=1e-6)
    assert plain.abs().max() > 0.01


@pytest.mark.parametrize("ghost", [1.0, 0.0])
def test_on_zero_gradients_only_the_claimed_noise_moves_the_weights(ghost: float) -> None:
    """Zero inputs to a bias-free linear model: every per-example gradient is 0, so after k
    steps each weight moved by lr * N(0, k (z C)^2) / B, within the 99.9% chi-square interval."""
    data = Split(torch.zeros(200, 20), torch.randint(0, 10, (200,)))
    trainer = LocalTrainer(partial(nn.Linear, 20, 500, bias=False), private_seed=keyed_by_run(1))
    steps, batch, clip, multiplier = 20, 40.0, 0.5, 1.3
    hyper = {"lr": 0.1, "batch_size": batch, "max_grad_norm": clip, "noise_multiplier": multiplier}
    delta = _delta(trainer, Task(0, 0, "dpsgd", steps, {**hyper, "ghost": ghost}), data).double()
    expected = steps * (0.1 * multiplier * clip / batch) ** 2
    n = delta.numel()
    half_width = 3.29 * math.sqrt(2 / n)
    assert (1 - half_width) * expected <= float((delta**2).mean()) <= (1 + half_width) * expected


def test_batches_and_noise_are_private_to_the_client() -> None:
    """Deployed, two runs of one task (same seed) differ; simulated, they repeat exactly."""
    data = SYNTHETIC.train.subset(torch.arange(100))
    task = Task(0, 0, "dpsgd", 3, {"batch_size": 10.0, "noise_multiplier": 1.0})
    build = partial(build_model, "mlp", SYNTHETIC.info)
    deployed = LocalTrainer(build)
    assert not torch.equal(_delta(deployed, task, data), _delta(deployed, task, data))
    simulated = LocalTrainer(build, private_seed=keyed_by_run(4))
    assert torch.equal(_delta(simulated, task, data), _delta(simulated, task, data))


def _accountant(kind: str) -> PrivacyAccountant:
    config = ExperimentConfig(
        training=TrainingConfig(batch_size=1, local_steps=2250),
        privacy=PrivacyConfig(mode="dpsgd", noise_multiplier=1.5, accountant=kind),
        evaluation=EvaluationConfig(federated_clients=0),
    )
    return PrivacyAccountant(config)


def test_the_accountant_gives_opacus_goldens() -> None:
    """sigma 1.5, q 0.04 (batch 1 of 25 examples), delta 1e-5: RDP at 2250 steps, PRV at 2249
    (the count Opacus's own test uses), over several updates of one client."""
    rdp = _accountant("rdp")
    for _ in range(9):
        rdp.released(3, 25, 250)
    assert rdp.epsilon(3) == pytest.approx(7.32911, abs=1e-4)
    prv = _accountant("prv")
    prv.released(3, 25, 2000)
    assert prv.released(3, 25, 249) == pytest.approx(6.77740, abs=1e-4)
    assert rdp.epsilon(4) == 0.0 and rdp.worst() == rdp.epsilon(3)
    claimed = _accountant("rdp")
    claimed.local_steps = 5
    assert claimed.released(3, 25, 2**62) == claimed.released(4, 25, 5)  # capped at the task's
    fewer = _accountant("rdp")
    fewer.released(3, 50, 2250)  # q 0.02: less privacy loss
    assert fewer.epsilon(3) < rdp.epsilon(3)


def test_a_simulation_under_dpsgd_repeats_and_accounts_each_client(tmp_path) -> None:
    first, entries = repeatable_run(
        tmp_path,
        *PRIVATE_FAST,
        "privacy.mode=dpsgd",
        "privacy.noise_multiplier=1.1",
        "training.batch_size=8",
    )
    replay = _accountant("rdp")
    replay.batch_size, replay.noise_multiplier = 8, 1.1
    for entry in (e for e in entries if e["event"] == "accepted"):
        expected = replay.released(entry["client"], entry["examples"], entry["steps"])
        assert entry["epsilon"] == pytest.approx(expected)
        assert entry["steps"] == 5
    privacy = first["privacy"]
    assert privacy["unit"].startswith("one training example") and privacy["accountant"] == (
        "opacus rdp"
    )
    assert privacy["epsilon_max"] == pytest.approx(replay.worst())
    assert first["history"][-1]["epsilon"] == pytest.approx(replay.worst())
    plain = simulate(composed(*PRIVATE_FAST, "training.batch_size=8"), None)
    assert plain["model_sha256"] != first["model_sha256"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["strategy=fedprox"], "privacy.mode: dpsgd trains with the dpsgd technique, but strategy"),
        (
            ["training.technique=fedprox"],
            "training.technique: must be sgd under privacy.mode=dpsgd",
        ),
        (["privacy.noise_multiplier=0"], "privacy.noise_multiplier: must be > 0 under mode dpsgd"),
        (["privacy.epsilon=3"], "privacy.epsilon: is for mode local"),
        (["privacy.delta=0.5"], r"privacy.delta: must be below 1 / the smallest client"),
    ],
)
def test_what_dpsgd_cannot_protect_fails_at_start(overrides, message) -> None:
    base = [*PRIVATE_FAST, "privacy.mode=dpsgd"]
    if not any(o.startswith("privacy.noise_multiplier") for o in overrides):
        base.append("privacy.noise_multiplier=1")
    fails_at_start([*base, *overrides], message)


def test_without_opacus_dpsgd_says_how_to_get_it() -> None:
    """Server and client alike name the extra that brings opacus."""
    script = (
        "import sys\n"
        "sys.modules['opacus'] = None\n"
        "import torch\n"
        "from fedcore.api import compose\n"
        "from fedcore.clients.techniques import TaskError\n"
        "from fedcore.clients.trainer import LocalTrainer\n"
        "from fedcore.data import load_dataset\n"
        "from fedcore.records import Task\n"
        "from fedcore.server.experiment import make_experiment\n"
        "from fedcore.typed_config import ConfigError\n"
        "try:\n"
        "    make_experiment(compose('dataset=synthetic', 'num_clients=20',\n"
        "                            'evaluation.federated_clients=0',\n"
        "                            'privacy.mode=dpsgd', 'privacy.noise_multiplier=1'))\n"
        "except ConfigError as error:\n"
        "    print(error)\n"
        "t = LocalTrainer(lambda: torch.nn.Linear(20, 10))\n"
        "try:\n"
        "    t.run(Task(0, 0, 'dpsgd', 1), t.bound.params.clone(), torch.zeros(0),\n"
        "          load_dataset('synthetic').train)\n"
        "except TaskError as error:\n"
        "    print(error)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    lines = done.stdout.splitlines()
    assert lines[0] == "privacy.mode: dpsgd needs opacus: pip install 'fedcore[privacy]'"
    assert lines[1].startswith("task.technique: dpsgd needs opacus, which this client lacks")


@pytest.mark.slow
def test_deployed_clients_train_with_dpsgd_and_the_server_accounts_them(tmp_path) -> None:
    """Real client processes over mTLS: the same account as a replay of the ledger gives."""
    make_certs(tmp_path, 2)
    server = start_server(
        tmp_path,
        *TWO_CLIENTS,
        "rounds=2",
        "evaluation.federated_clients=0",
        "privacy.mode=dpsgd",
        "privacy.noise_multiplier=1.2",
        "privacy.accountant=prv",
        "training.batch_size=16",
    )
    port = server_port(server)
    finish_federation(server, [client(tmp_path, port, 0), client(tmp_path, port, 1)], accepted=2)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    replay = _accountant("prv")
    replay.batch_size, replay.noise_multiplier = 16, 1.2
    accepted = [
        e for e in read_ledger(tmp_path / "run" / "ledger.jsonl") if e["event"] == "accepted"
    ]
    for entry in accepted:
        assert entry["epsilon"] == pytest.approx(
            replay.released(entry["client"], entry["examples"], entry["steps"])
        )
    assert len(accepted) == 4 and summary["privacy"]["accountant"] == "opacus prv"
    assert summary["privacy"]["epsilon_max"] == pytest.approx(replay.worst())
    assert replay.worst() > 0


def test_no_client_trains_past_its_dpsgd_budget(tmp_path) -> None:
    """Clients with few examples (a high sampling rate) spend their budget first; the others
    go on to the last version."""
    overrides = (
        *FAST,
        "rounds=20",
        "evaluation.federated_clients=0",
        "privacy.mode=dpsgd",
        "privacy.noise_multiplier=1.5",
        "privacy.budget=1.5",
        "training.batch_size=4",
    )
    summary = simulate(composed(*overrides), tmp_path / "run", overrides)
    entries = read_ledger(tmp_path / "run" / "ledger.jsonl")
    spent = {e["client"] for e in entries if e["event"] == "spent"}
    assert spent and all(e["epsilon"] <= 1.5 for e in entries if e["event"] == "accepted")
    assert summary["versions"] == 20 and summary["privacy"]["epsilon_max"] <= 1.5
    later = [e for e in entries if e["event"] == "accepted" and e["client"] in spent]
    assert all(e["epsilon"] > 1.0 for e in later[-len(spent) :])
