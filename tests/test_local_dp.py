"""Local differential privacy (`clients/transforms/local_dp.py`, `fedcore/privacy.py`): clipping
holds on the bytes the server decodes, the noise is the Gaussian it claims to be and comes from
the client's private stream, ε composes as Opacus computes it, and bad settings fail at start."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from fedcore.clients.trainer import LocalTrainer, keyed_by_run
from fedcore.clients.transforms import TransformContext, transform_type
from fedcore.clients.transforms.local_dp import LocalDPOptions
from fedcore.config import EvaluationConfig, ExperimentConfig, PrivacyConfig
from fedcore.messages import update_from_upload, update_vectors, upload_header, upload_layout
from fedcore.payloads import DenseDelta
from fedcore.privacy import analytic_gaussian_sigma, gaussian_delta, gaussian_epsilon
from fedcore.records import Task, TransformSpec, Update
from fedcore.server.experiment import make_experiment
from fedcore.server.ledger import read_ledger
from fedcore.server.privacy_accounting import PrivacyAccountant
from fedcore.server.simulation import simulate
from fedcore.typed_config import ConfigError
from fedcore.wire import VectorAssembler, vector_frames
from tests.conftest import FAST, PRIVATE_FAST, composed, fails_at_start, repeatable_run
from tests.processes import (
    TWO_CLIENTS,
    client,
    finish_federation,
    free_port,
    make_certs,
    server_port,
    start_server,
    wait_for,
)

D = 20_000


def _update(delta: torch.Tensor, client: int = 0) -> Update:
    return Update(client, 0, 10, DenseDelta(delta), metrics={"train_loss": 0.3})


def _context(seed: int) -> TransformContext:
    return TransformContext(D, lambda: torch.Generator().manual_seed(seed))


def _through_the_wire(update: Update) -> Update:
    """The update as the server decodes it from the frames a client streams."""
    header = upload_header(update, "c", "s", "t")
    from fedcore.params import ModelLayout

    layout = ModelLayout.of(torch.nn.Linear(D, 1, bias=False))
    assembler = VectorAssembler(upload_layout(header, layout, 0))
    for frame in vector_frames(update_vectors(replace(update, buffers=torch.zeros(0)))):
        assembler.add(b"".join(frame))
    return update_from_upload(header, 0, assembler.result())


@pytest.mark.parametrize(("norm", "clipped"), [(100.0, True), (0.5, False)])
def test_the_clip_holds_on_the_bytes_the_server_decodes(norm: float, clipped: bool) -> None:
    delta = torch.randn(D, generator=torch.Generator().manual_seed(1))
    delta *= norm / torch.linalg.vector_norm(delta)
    clip = transform_type("clip")()
    sent = clip.apply(
        _update(delta), clip.decode(TransformSpec("clip", {"max_norm": 1.0})), _context(0)
    )
    received = _through_the_wire(sent)
    assert isinstance(received.payload, DenseDelta)
    values = received.payload.values
    if clipped:
        assert float(torch.linalg.vector_norm(values, dtype=torch.float64)) <= 1.0 * (1 + 1e-6)
    else:
        assert torch.equal(values, delta)


def test_a_zero_update_is_not_divided_by_its_norm() -> None:
    ldp = transform_type("ldp")()
    options = LocalDPOptions(max_norm=1.0, noise_multiplier=1.0)
    noised = ldp.apply(_update(torch.zeros(D)), options, _context(3))
    assert isinstance(noised.payload, DenseDelta)
    assert torch.isfinite(noised.payload.values).all() and noised.metrics == {}


def _ks_p_value(sample: np.ndarray) -> float:
    """Kolmogorov-Smirnov test of `sample` against N(0, 1): the asymptotic p-value."""
    ordered = np.sort(sample)
    n = len(ordered)
    cdf = 0.5 * np.array([math.erfc(-x / math.sqrt(2)) for x in ordered])
    statistic = max(
        float(np.max(np.arange(1, n + 1) / n - cdf)), float(np.max(cdf - np.arange(n) / n))
    )
    scaled = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * statistic
    return float(
        min(1.0, 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * scaled**2) for k in range(1, 101)))
    )


def test_noise_on_zero_updates_is_the_gaussian_claimed() -> None:
    """50 rounds of 4 clients' zero updates: variance within the 99.9% chi-square interval of
    sigma^2, mean by a z-test, normality by KS, no correlation across rounds or clients."""
    ldp = transform_type("ldp")()
    options = LocalDPOptions(max_norm=0.5, noise_multiplier=1.3)
    sigma = options.sigma
    seeds = keyed_by_run(7)
    rows = []
    for round_number in range(50):
        for number in range(4):
            task = Task(number, round_number, seed=123)  # the same task seed everywhere
            context = TransformContext(
                D, lambda task=task: torch.Generator().manual_seed(seeds(task))
            )
            noised = ldp.apply(_update(torch.zeros(D), number), options, context)
            assert isinstance(noised.payload, DenseDelta)
            rows.append(noised.payload.values.double().numpy())
    noise = np.stack(rows)
    n = noise.size
    variance = float(np.sum(noise**2) / n)
    # chi-square with n degrees of freedom, 99.9% interval by the normal approximation.
    half_width = 3.29 * math.sqrt(2 / n)
    assert (1 - half_width) * sigma**2 <= variance <= (1 + half_width) * sigma**2
    assert abs(float(noise.mean())) / (sigma / math.sqrt(n)) < 3.29
    assert _ks_p_value(noise[:, :5000].ravel()[:20_000] / sigma) > 1e-3
    correlations = np.corrcoef(noise[:, :2000])
    off_diagonal = correlations[~np.eye(len(correlations), dtype=bool)]
    assert float(np.max(np.abs(off_diagonal))) < 5 / math.sqrt(2000)


def test_two_deployed_tasks_with_the_same_seed_get_different_noise() -> None:
    """A deployed client's trainer draws its noise from the OS, not from the task."""
    trainer = LocalTrainer(lambda: torch.nn.Linear(20, 10))
    data_free = Task(0, 0, technique="sgd", seed=5, transforms=(TransformSpec("ldp", {}),))
    params = torch.zeros(trainer.bound.layout.params.numel)
    from fedcore.data import load_dataset

    train = load_dataset("synthetic").train.subset(torch.arange(64))
    buffers = torch.zeros(0)
    first = trainer.run(data_free, params.clone(), buffers, train)
    second = trainer.run(data_free, params.clone(), buffers, train)
    assert isinstance(first.payload, DenseDelta) and isinstance(second.payload, DenseDelta)
    assert not torch.equal(first.payload.values, second.payload.values)
    simulated = LocalTrainer(lambda: torch.nn.Linear(20, 10), private_seed=keyed_by_run(3))
    again = [simulated.run(data_free, params.clone(), buffers, train) for _ in range(2)]
    assert all(isinstance(u.payload, DenseDelta) for u in again)
    assert torch.equal(again[0].payload.values, again[1].payload.values)  # type: ignore[union-attr]


def test_the_clients_own_settings_only_tighten_the_servers() -> None:
    ldp = transform_type("ldp")()
    server = LocalDPOptions(max_norm=2.0, noise_multiplier=0.5)
    own = LocalDPOptions(max_norm=1.0, noise_multiplier=0.8)
    assert ldp.tighten(server, own) == LocalDPOptions(1.0, 0.8)
    assert ldp.tighten(own, server) == LocalDPOptions(1.0, 0.8)
    with pytest.raises(ValueError, match="'topk' takes no client-side settings"):
        LocalTrainer(lambda: torch.nn.Linear(2, 2), own_transforms={"topk": {"fraction": 0.1}})


def test_a_client_floor_applies_when_the_server_asks_for_no_noise() -> None:
    trainer = LocalTrainer(
        lambda: torch.nn.Linear(20, 10),
        private_seed=keyed_by_run(0),
        own_transforms={"ldp": {"max_norm": 0.1, "noise_multiplier": 1.0}},
    )
    plain = Task(0, 0, technique="sgd", local_steps=2)
    from fedcore.data import load_dataset

    train = load_dataset("synthetic").train.subset(torch.arange(64))
    params = torch.zeros(trainer.bound.layout.params.numel)
    update = trainer.run(plain, params, torch.zeros(0), train)
    assert isinstance(update.payload, DenseDelta) and update.metrics == {}
    spread = float(update.payload.values.std())
    assert 0.15 < spread < 0.25  # noise std 2 * 0.1 * 1.0 dominates a clipped delta of 0.1


def test_analytic_gaussian_calibration_meets_its_target_exactly() -> None:
    for epsilon, delta in ((0.5, 1e-5), (1.0, 1e-5), (8.0, 1e-6)):
        sigma = analytic_gaussian_sigma(epsilon, delta, sensitivity=2.0)
        assert gaussian_delta(sigma, epsilon, 2.0) <= delta
        assert gaussian_delta(sigma * (1 - 1e-6), epsilon, 2.0) > delta
    classic = math.sqrt(2 * math.log(1.25 / 1e-5))  # valid for epsilon < 1 only
    assert analytic_gaussian_sigma(1.0, 1e-5) < classic


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # opacus's PRV at q = 1
def test_composed_epsilon_is_exact_below_opacus_rdp_and_moves_the_right_way() -> None:
    """Opacus's PRV accountant (a numerical upper estimate) agrees to its discretisation; its
    RDP accountant (a looser bound) is never below."""
    accountants = pytest.importorskip("opacus.accountants")
    for multiplier, releases in ((0.6, 1), (1.0, 10), (5.0, 50), (0.7, 3)):
        prv, rdp = accountants.PRVAccountant(), accountants.RDPAccountant()
        for _ in range(releases):
            prv.step(noise_multiplier=multiplier, sample_rate=1.0)
            rdp.step(noise_multiplier=multiplier, sample_rate=1.0)
        ours = gaussian_epsilon(multiplier, releases, 1e-5)
        assert ours <= prv.get_epsilon(1e-5) <= ours + 0.02
        assert ours < rdp.get_epsilon(1e-5)
    multiplier = analytic_gaussian_sigma(8.0, 1e-5)
    assert gaussian_epsilon(multiplier, 1, 1e-5) == pytest.approx(8.0, abs=1e-9)
    assert gaussian_epsilon(2.0, 20, 1e-5) > gaussian_epsilon(2.0, 10, 1e-5)
    assert gaussian_epsilon(3.0, 10, 1e-5) < gaussian_epsilon(2.0, 10, 1e-5)
    assert gaussian_epsilon(2.0, 0, 1e-5) == 0.0
    assert math.isfinite(gaussian_epsilon(0.01, 3, 1e-5))  # e^epsilon alone would overflow


def test_a_simulation_under_local_dp_accounts_every_upload_and_repeats(tmp_path) -> None:
    first, entries = repeatable_run(
        tmp_path,
        *PRIVATE_FAST,
        "privacy.mode=local",
        "privacy.noise_multiplier=0.05",
        "privacy.max_norm=0.5",
    )
    uploads: dict[int, int] = {}
    for entry in (e for e in entries if e["event"] in ("accepted", "rejected", "expired")):
        uploads[entry["client"]] = uploads.get(entry["client"], 0) + 1
        expected = gaussian_epsilon(0.05, uploads[entry["client"]], 1e-5)
        assert entry["epsilon"] == pytest.approx(expected)
    privacy = first["privacy"]
    assert privacy["epsilon_max"] == pytest.approx(
        gaussian_epsilon(0.05, max(uploads.values()), 1e-5)
    )
    assert privacy["unit"].startswith("one client's update") and privacy["delta"] == 1e-5
    assert first["history"][-1]["epsilon"] == privacy["epsilon_max"]
    without = simulate(composed(*PRIVATE_FAST), None)
    assert without["model_sha256"] != first["model_sha256"] and "privacy" not in without


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["privacy.noise_multiplier=1", "privacy.epsilon=2"],
            "privacy.noise_multiplier: set exactly one",
        ),
        (["privacy.noise_multiplier=0"], "sigma <= 0 is no privacy"),
        (
            ["privacy.noise_multiplier=1", "privacy.delta=0.1"],
            r"privacy.delta: must be below 1 / num_clients \(0.05\)",
        ),
        (
            ["privacy.noise_multiplier=1", "evaluation.federated_clients=5"],
            "evaluation.federated_clients: must be 0",
        ),
        (
            ["privacy.noise_multiplier=1", "training.transforms=[{name: topk, fraction: 0.1}]"],
            r"training.transforms\[0\].name: cannot come before privacy.mode=local's noise",
        ),
        (
            ["privacy.noise_multiplier=1", "validation.max_delta_norm=10"],
            "validation.max_delta_norm: 10.0 would refuse honest updates",
        ),
    ],
)
def test_bad_privacy_settings_fail_at_start_naming_the_key(overrides, message) -> None:
    base = [*FAST, "privacy.mode=local"]
    if not any(o.startswith("evaluation.") for o in overrides):
        base.append("evaluation.federated_clients=0")
    fails_at_start([*base, *overrides], message)


def test_local_dp_imports_no_opacus_or_scipy() -> None:
    """What a riscv64 client runs: the transform and the arithmetic, with opacus and scipy
    unimportable."""
    script = (
        "import sys\n"
        "sys.modules['opacus'] = None; sys.modules['scipy'] = None\n"
        "import torch\n"
        "from fedcore.clients.trainer import LocalTrainer\n"
        "from fedcore.privacy import gaussian_epsilon\n"
        "from fedcore.data import load_dataset\n"
        "from fedcore.records import Task, TransformSpec\n"
        "t = LocalTrainer(lambda: torch.nn.Linear(20, 10))\n"
        "task = Task(0, 0, local_steps=2, transforms=(TransformSpec('ldp', {}),))\n"
        "data = load_dataset('synthetic').train\n"
        "u = t.run(task, torch.zeros(t.bound.layout.params.numel), torch.zeros(0), data)\n"
        "assert u.payload.values.abs().sum() > 0 and gaussian_epsilon(1.0, 3, 1e-5) > 0\n"
        "loaded = [m for m, module in sys.modules.items() if module is not None]\n"
        "print(sorted(m for m in loaded if m.split('.')[0] in ('opacus', 'scipy')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]", done.stderr


@pytest.mark.slow
def test_a_deployment_under_local_dp_states_each_clients_epsilon(tmp_path) -> None:
    """Real clients over mTLS: one tightens the server's noise with its own floor; the ledger
    and the summary give each client's ε, which the server bounds from what it asked."""
    make_certs(tmp_path, 2)
    server = start_server(
        tmp_path,
        *TWO_CLIENTS,
        "rounds=2",
        "evaluation.federated_clients=0",
        "privacy.mode=local",
        "privacy.epsilon=4",
        "privacy.max_norm=0.5",
        "privacy.delta=1e-3",
        "divergence.loss_factor=0",
    )
    port = server_port(server)
    clients = [client(tmp_path, port, 0), client(tmp_path, port, 1, "--local-dp", "0.1,3")]
    finish_federation(server, clients, accepted=2)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    privacy = summary["privacy"]
    multiplier = analytic_gaussian_sigma(4.0, 1e-3)
    assert privacy["noise_multiplier"] == pytest.approx(multiplier)
    assert privacy["epsilon_per_upload"] == pytest.approx(gaussian_epsilon(multiplier, 1, 1e-3))
    assert privacy["epsilon_by_client"] == {
        "0": pytest.approx(gaussian_epsilon(multiplier, 2, 1e-3)),
        "1": pytest.approx(gaussian_epsilon(multiplier, 2, 1e-3)),
    }
    accepted = [
        e for e in read_ledger(tmp_path / "run" / "ledger.jsonl") if e["event"] == "accepted"
    ]
    assert len(accepted) == 4 and all("epsilon" in e for e in accepted)
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(rows[-1])["epsilon"] == pytest.approx(privacy["epsilon_max"])


def test_a_resumed_account_counts_voided_uploads_too() -> None:
    """A resume voids ledger entries after its checkpoint, but their uploads were released."""
    config = ExperimentConfig(
        privacy=PrivacyConfig(mode="local", noise_multiplier=2.0),
        evaluation=EvaluationConfig(federated_clients=0),
    )
    accountant = PrivacyAccountant(config)
    sent = {"examples": 10, "steps": 5}
    accountant.rebuild(
        [
            {"event": "accepted", "client": 0, **sent},
            {"event": "rejected", "client": 0, **sent},
            {"event": "resumed", "version": 1},
            {"event": "accepted", "client": 0, **sent},
            {"event": "expired", "client": 1, **sent},
            {"event": "evaluated", "client": 1, **sent},
            {"event": "refused", "peer": "x"},
        ]
    )
    assert dict(accountant.uploads) == {0: 3, 1: 1}
    assert accountant.worst() == gaussian_epsilon(2.0, 3, 1e-5)
    assert accountant.released(1, 10, 5) == gaussian_epsilon(2.0, 2, 1e-5)


def test_a_spent_budget_ends_a_clients_training_and_then_the_run(tmp_path) -> None:
    overrides = (
        *FAST,
        "rounds=30",
        "evaluation.federated_clients=0",
        "privacy.mode=local",
        "privacy.noise_multiplier=2",
        "privacy.budget=2",
        "divergence.loss_factor=0",
    )
    summary = simulate(composed(*overrides), tmp_path / "run", overrides)
    entries = read_ledger(tmp_path / "run" / "ledger.jsonl")
    spent_at = {e["client"]: index for index, e in enumerate(entries) if e["event"] == "spent"}
    assert len(spent_at) > 15 and all(e["budget"] == 2 for e in entries if e["event"] == "spent")
    for index, entry in enumerate(entries):
        if entry["event"] == "accepted":
            assert entry["epsilon"] <= 2
            assert index < spent_at.get(entry["client"], len(entries))
    assert summary["stop_reason"] == (
        f"privacy budget spent: {20 - len(spent_at)} of 20 clients can take another training "
        "task, fewer than clients_per_round (5)"
    )
    assert summary["privacy"]["epsilon_max"] <= 2 < gaussian_epsilon(2.0, 3, 1e-5)


def test_a_budget_below_one_update_fails_at_start() -> None:
    one = gaussian_epsilon(2.0, 1, 1e-5)
    overrides = [*PRIVATE_FAST, "privacy.mode=local"]
    with pytest.raises(ConfigError, match=r"privacy.budget: 0.5 does not cover one training task"):
        make_experiment(composed(*overrides, "privacy.noise_multiplier=2", "privacy.budget=0.5"))
    assert one > 0.5


@pytest.mark.slow
def test_a_killed_server_resumes_the_account_and_spent_clients_say_so(tmp_path) -> None:
    """A budget of four uploads per client; the server is killed (SIGKILL) after version 2 and
    resumed from its checkpoint. Uploads the resume voided stay counted, no client uploads past
    its budget over both lives, and a spent client prints why it gets no more tasks."""
    make_certs(tmp_path, 2)
    port = free_port()
    budget = gaussian_epsilon(2.0, 4, 1e-3) * (1 + 1e-9)
    args = [
        *(o for o in TWO_CLIENTS if not o.startswith("deployment.address")),
        f"deployment.address=127.0.0.1:{port}",
        "rounds=20",
        "evaluation.federated_clients=0",
        "privacy.mode=local",
        "privacy.noise_multiplier=2",
        "privacy.delta=1e-3",
        f"privacy.budget={budget}",
        "divergence.loss_factor=0",
    ]
    run = tmp_path / "run"
    server = start_server(tmp_path, *args)
    wait_for(lambda: (run / "config.yaml").exists(), 60, "the run directory")
    clients = [client(tmp_path, port, i, "--slow", "0.3") for i in range(2)]

    def versions() -> int:
        ledger = run / "ledger.jsonl"
        entries = read_ledger(ledger) if ledger.exists() else []
        return sum(e["event"] == "model" for e in entries)

    wait_for(lambda: versions() >= 2, 120, "version 2")
    server.kill()
    server.communicate(timeout=30)
    server = start_server(tmp_path, *args)
    outputs = [c.communicate(timeout=240)[0] for c in clients]
    server_output = server.communicate(timeout=60)[0]
    assert server.returncode == 0, server_output
    assert "from model version" in server_output
    entries = read_ledger(run / "ledger.jsonl")
    uploads = [e["client"] for e in entries if e["event"] == "accepted"]
    assert sorted(set(uploads)) == [0, 1] and all(uploads.count(c) <= 4 for c in (0, 1))
    assert all(e["epsilon"] <= budget for e in entries if e["event"] == "accepted")
    spent = {e["client"] for e in entries if e["event"] == "spent"}
    summary = json.loads((run / "summary.json").read_text())
    # The run stops at the first spent client; the other may be found spent as it goes idle.
    assert summary["stop_reason"] == (
        "privacy budget spent: 1 of 2 clients can take another training task, fewer than "
        "clients_per_round (2)"
    )
    assert spent
    line = f"privacy budget spent: ε {budget / (1 + 1e-9):.4g} of {budget:g}"
    for number, (process, output) in enumerate(zip(clients, outputs, strict=True)):
        assert process.returncode == 0, output
        assert (f"client client-{number}: {line}" in output) == (number in spent), output
