"""The storage-less Scorer evaluates exactly as the real module does; federated evaluation
scores a fixed, bounded sample of each client's hold-out."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from fedcore.data.split import Split
from fedcore.models import CharRNN
from fedcore.params import ModelLayout, module_vectors
from fedcore.server.evaluation import Scorer
from fedcore.server.experiment import make_experiment
from fedcore.server.ledger import read_ledger
from fedcore.server.rundir import read_model_file
from fedcore.server.simulation import simulate
from tests.conftest import FAST, composed


def _conv_with_batchnorm() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    )


def _reference(module: nn.Module, data: Split) -> tuple[float, float]:
    module.eval()
    with torch.no_grad():
        x, y = data.batch(torch.arange(len(data)))
        logits = module(x)
        loss = nn.functional.cross_entropy(logits, y, reduction="sum").double() / len(data)
        return float(loss), float((logits.argmax(dim=1) == y).double().mean())


def test_scorer_matches_the_real_module_and_holds_no_weights() -> None:
    torch.manual_seed(0)
    real = _conv_with_batchnorm()
    real.train()
    real(torch.randn(16, 1, 8, 8))  # move the BatchNorm statistics off their initial values
    layout = ModelLayout.of(real)
    params, buffers = module_vectors(real, layout)
    data = Split(torch.randn(50, 1, 8, 8), torch.randint(0, 3, (50,)))
    scorer = Scorer(_conv_with_batchnorm, layout, batch_size=7)
    result = scorer(params, buffers, data)
    loss, accuracy = _reference(real, data)
    assert abs(result["loss"] - loss) < 1e-6
    assert result["accuracy"] == accuracy
    assert result["examples"] == 50
    assert all(p.is_meta for p in scorer.module.parameters())


def test_scorer_runs_recurrent_models() -> None:
    torch.manual_seed(1)
    real = CharRNN(20, "lstm", 8, 16, 2)
    layout = ModelLayout.of(real)
    params, buffers = module_vectors(real, layout)
    data = Split(torch.randint(0, 20, (30, 12)), torch.randint(0, 20, (30,)))
    result = Scorer(lambda: CharRNN(20, "lstm", 8, 16, 2), layout)(params, buffers, data)
    loss, accuracy = _reference(real, data)
    assert abs(result["loss"] - loss) < 1e-6
    assert result["accuracy"] == accuracy


def test_clients_score_a_fixed_bounded_sample_of_their_hold_outs(tmp_path) -> None:
    overrides = (*FAST, "evaluation.client_examples=7", "evaluation.federated_clients=4")
    config = composed(*overrides)
    simulate(config, tmp_path / "run", overrides)
    experiment = make_experiment(config)
    evaluated = [
        e for e in read_ledger(tmp_path / "run" / "ledger.jsonl") if e["event"] == "evaluated"
    ]
    assert len({e["base_version"] for e in evaluated}) == 3 and len(evaluated) == 12
    holdouts = {c: experiment.federation.holdout_split(c) for c in {e["client"] for e in evaluated}}
    assert all(len(holdout) > 7 for holdout in holdouts.values()), "the cap must bite"
    assert {e["examples"] for e in evaluated} == {7}
    params, buffers = read_model_file(tmp_path / "run" / "model.fct", experiment.layout)
    scorer = Scorer(experiment.build_model, experiment.layout)
    for entry in (e for e in evaluated if e["base_version"] == 3):
        sample = holdouts[entry["client"]].sample(7, (entry["client"], 9))
        expected = scorer(params, buffers, sample)
        whole = scorer(params, buffers, holdouts[entry["client"]])
        assert entry["eval_loss"] == pytest.approx(expected["loss"], rel=1e-5)
        assert entry["eval_loss"] != pytest.approx(whole["loss"], rel=1e-5)


def test_a_sample_is_fixed_by_its_seed_and_the_whole_split_when_not_smaller() -> None:
    data = Split(torch.arange(40.0).unsqueeze(1), torch.zeros(40, dtype=torch.int64))
    first = data.sample(10, (3, 9)).batch(torch.arange(10))[0].flatten().tolist()
    assert first == data.sample(10, (3, 9)).batch(torch.arange(10))[0].flatten().tolist()
    assert first == sorted(first) and len(set(first)) == 10
    assert first != data.sample(10, (4, 9)).batch(torch.arange(10))[0].flatten().tolist()
    assert data.sample(0, (3, 9)) is data and data.sample(40, (3, 9)) is data


def test_the_meta_module_is_built_without_its_initialisers() -> None:
    """Torch's meta `normal_` imports torch._dynamo (seconds of start-up for an embedding)."""
    probe = (
        "import sys\n"
        "from fedcore.models import CharRNN\n"
        "from fedcore.params import ModelLayout\n"
        "from fedcore.server.evaluation import Scorer\n"
        "layout = ModelLayout.of(CharRNN(20, 'gru', 8, 16, 2))\n"
        "scorer = Scorer(lambda: CharRNN(20, 'gru', 8, 16, 2), layout)\n"
        "assert all(p.is_meta for p in scorer.module.parameters())\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout == "False\n", result.stderr
