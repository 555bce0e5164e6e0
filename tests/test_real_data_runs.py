"""Each real dataset runs through `fedcore sim`'s path end to end and learns something."""

import pytest

from fedcore.server.simulation import simulate
from tests.conftest import composed

pytestmark = pytest.mark.slow


def test_heart_hospitals_as_natural_clients(tmp_path):
    summary = simulate(composed("+experiment=heart", "rounds=15", "output.progress=off"), tmp_path)
    assert summary["ledger"]["accepted"] == 60, "all 4 hospitals report every round"
    assert summary["final"]["test_accuracy"] > 0.7


def test_shakespeare_roles_as_natural_clients():
    summary = simulate(
        composed(
            "+experiment=shakespeare",
            "dataset.options.max_clients=12",
            "num_clients=12",
            "clients_per_round=4",
            "rounds=3",
            "training.local_steps=20",
            "model.options.hidden=32",
            "model.options.layers=1",
            "evaluation.test_examples=2000",
            "output.progress=off",
        ),
        None,
    )
    assert summary["versions"] == 3
    assert summary["final"]["test_accuracy"] > 0.12, "beats always guessing the space character"


def test_fmnist_dirichlet():
    summary = simulate(
        composed(
            "dataset=fmnist",
            "model=mlp",
            "rounds=3",
            "num_clients=20",
            "clients_per_round=5",
            "partition.alpha=0.3",
            "evaluation.test_examples=2000",
            "output.progress=off",
        ),
        None,
    )
    assert summary["final"]["test_accuracy"] > 0.5
