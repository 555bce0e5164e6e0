"""The storage-less Scorer evaluates exactly as the real module does."""

from __future__ import annotations

import torch
from torch import nn

from fedcore.data.split import Split
from fedcore.models import CharRNN
from fedcore.params import ModelLayout, module_vectors
from fedcore.server.evaluation import Scorer


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
