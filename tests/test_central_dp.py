"""Central DP (`privacy.mode=central`): the server clips each update and noises the mean it
publishes, by the noise it claims, and every client's ε is Opacus's for the versions so far."""

from __future__ import annotations

import math

import pytest
import torch

from fedcore.server.experiment import make_experiment
from fedcore.server.privacy_accounting import PrivacyAccountant
from fedcore.server.rundir import read_model_file
from tests.conftest import PRIVATE_FAST, composed, fails_at_start, repeatable_run

pytest.importorskip("opacus")

CENTRAL = (*PRIVATE_FAST, "privacy.mode=central", "strategy.weighting=uniform")


def _moved(run, overrides) -> tuple[torch.Tensor, int]:
    """How far the final model lies from the initial one, and the model's size."""
    experiment = make_experiment(composed(*overrides))
    final, _ = read_model_file(run / "a" / "model.fct", experiment.layout)
    return final - experiment.initial_model().params, experiment.layout.params.numel


def test_the_published_mean_carries_the_claimed_noise(tmp_path) -> None:
    """Clients that barely move (lr 1e-9): 3 versions of k = 5 updates each moved every
    weight by N(0, 3 (z C / k)^2), within the 99.9% chi-square interval."""
    overrides = (
        *CENTRAL,
        "privacy.noise_multiplier=1.5",
        "privacy.max_norm=0.2",
        "training.lr=1e-9",
    )
    summary, _ = repeatable_run(tmp_path, *overrides)
    moved, numel = _moved(tmp_path, overrides)
    expected = 3 * (1.5 * 0.2 / 5) ** 2
    half_width = 3.29 * math.sqrt(2 / numel)
    variance = float((moved.double() ** 2).mean())
    assert (1 - half_width) * expected <= variance <= (1 + half_width) * expected
    assert summary["privacy"]["versions_noised"] == 3


@pytest.mark.filterwarnings("ignore:Optimal order is the smallest alpha:UserWarning")
def test_the_server_clips_each_update(tmp_path) -> None:
    """Almost no noise: three versions moved the model by at most three clipped means."""
    overrides = (*CENTRAL, "privacy.noise_multiplier=1e-9", "privacy.max_norm=0.01")
    repeatable_run(tmp_path, *overrides)
    moved, _ = _moved(tmp_path, overrides)
    assert 0.01 < float(moved.norm()) <= 3 * 0.01 * (1 + 1e-4)


def test_every_client_has_the_subsampled_gaussians_epsilon(tmp_path) -> None:
    accountants = pytest.importorskip("opacus.accountants")
    summary, _ = repeatable_run(tmp_path, *CENTRAL, "privacy.noise_multiplier=0.8")
    reference = accountants.RDPAccountant()
    reference.history = [(0.8, 5 / 20, 3)]
    epsilon = reference.get_epsilon(1e-5)
    assert summary["privacy"]["epsilon_max"] == pytest.approx(epsilon)
    assert summary["history"][-1]["epsilon"] == pytest.approx(epsilon)
    assert "epsilon_by_client" not in summary["privacy"]  # one ε for every client
    accountant = PrivacyAccountant(
        make_experiment(composed(*CENTRAL, "privacy.noise_multiplier=0.8")).config
    )
    assert accountant.next_epsilon(0, 10) > 0 == accountant.worst()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["strategy.weighting=examples"],
            "strategy.weighting: must be uniform under privacy.mode=central",
        ),
        (
            ["strategy=fedadam", "strategy.weighting=uniform"],
            "privacy.mode: central needs FedAvg or FedProx with the plain server step",
        ),
        (["strategy=fedasync"], "strategy fedasync is not"),
        (
            ["strategy.weighting=uniform", "privacy.noise_multiplier=0"],
            "privacy.noise_multiplier: must be > 0 under mode central",
        ),
        (
            ["strategy.weighting=uniform", "privacy.delta=0.1"],
            r"privacy.delta: must be below 1 / num_clients \(0.05\)",
        ),
    ],
)
def test_what_central_dp_cannot_protect_fails_at_start(overrides, message) -> None:
    base = [*PRIVATE_FAST, "privacy.mode=central", "privacy.noise_multiplier=1"]
    fails_at_start([*base, *overrides], message)


def test_a_resumed_account_counts_every_version_published(tmp_path) -> None:
    """Versions a resume voided were published all the same: they stay counted."""
    config = make_experiment(composed(*CENTRAL, "privacy.noise_multiplier=0.8")).config
    accountant = PrivacyAccountant(config)
    accountant.rebuild(
        [
            {"event": "accepted", "client": 3, "examples": 10, "steps": 5},
            {"event": "model", "version": 1},
            {"event": "model", "version": 2},
            {"event": "resumed", "version": 1},
            {"event": "model", "version": 2},
        ]
    )
    assert accountant.versions == 3
    again = PrivacyAccountant(config)
    for version in (1, 2, 3):
        again.noised(torch.zeros(4), version, 5)
    assert accountant.epsilon(3) == pytest.approx(again.summary()["epsilon_max"])
    assert accountant.epsilon(3) > 0
