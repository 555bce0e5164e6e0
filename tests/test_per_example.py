"""Per-example clipping (`clients/per_example.py`): the clipped sum it leaves in `.grad` equals
clipping each example's own gradient and summing, for every kind of layer fedcore's models use
(recurrent ones through Opacus's DP layers), in both modes; what cannot be clipped is named."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedcore.clients.per_example import ClippedGradients, clipping_problem
from fedcore.data.federated import DatasetInfo
from fedcore.models import build_model

pytest.importorskip("opacus")

IMAGE = DatasetInfo("image", "image", (1, 16, 16), 10)
TEXT = DatasetInfo("text", "text", (12,), 20, vocab_size=20)


def _batch(info: DatasetInfo, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    if info.kind == "text":
        return torch.randint(0, info.vocab_size, (size, *info.input_shape)), torch.randint(
            0, info.num_classes, (size,)
        )
    return torch.randn(size, *info.input_shape), torch.randint(0, info.num_classes, (size,))


def _explicit(module: nn.Module, x: torch.Tensor, y: torch.Tensor, bound: float) -> list:
    """Clip each example's own gradient (one backward pass each), then sum."""
    parameters = list(module.parameters())
    total = [torch.zeros_like(p) for p in parameters]
    for i in range(len(x)):
        loss = nn.functional.cross_entropy(module(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, parameters)
        norm = torch.sqrt(sum(g.square().sum() for g in grads))
        scale = min(1.0, bound / (float(norm) + 1e-6))
        for t, g in zip(total, grads, strict=True):
            t += scale * g
    return total


@pytest.mark.parametrize("ghost", [True, False])
@pytest.mark.parametrize(
    ("model", "info"),
    [("mlp", IMAGE), ("lenet5", IMAGE), ("char_gru", TEXT), ("char_lstm", TEXT)],
)
def test_the_clipped_sum_is_each_example_clipped_then_summed(model, info, ghost) -> None:
    torch.manual_seed(0)
    module = build_model(model, info, **({"hidden": 16} if info.kind == "text" else {}))
    x, y = _batch(info, 6)
    expected = _explicit(module, x, y, bound=0.05)
    norms = _explicit(module, x, y, bound=1e9)
    assert torch.sqrt(sum(g.square().sum() for g in norms)) > 6 * 0.05  # clipping acts
    clipping = ClippedGradients(module, 0.05, ghost)
    try:
        module.zero_grad(set_to_none=True)
        losses = nn.functional.cross_entropy(module(x), y, reduction="none")
        clipping.backward(losses)
    finally:
        clipping.close()
    for parameter, want in zip(module.parameters(), expected, strict=True):
        assert parameter.grad is not None
        torch.testing.assert_close(parameter.grad, want, rtol=1e-4, atol=1e-6)
    if info.kind == "text":
        assert isinstance(module.rnn, nn.GRU | nn.LSTM)  # put back after the task


def test_an_empty_poisson_batch_leaves_zero_gradients() -> None:
    module = build_model("mlp", IMAGE)
    clipping = ClippedGradients(module, 1.0, True)
    x, y = _batch(IMAGE, 0)
    clipping.backward(nn.functional.cross_entropy(module(x), y, reduction="none"))
    clipping.close()
    assert all(p.grad is not None and not p.grad.any() for p in module.parameters())


def test_what_cannot_be_clipped_is_named() -> None:
    assert clipping_problem(build_model("char_lstm", TEXT)) is None
    normed = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    assert "BatchNorm" in str(clipping_problem(normed))
    unknown = nn.Sequential(nn.Linear(4, 4), nn.Bilinear(4, 4, 2))
    problem = clipping_problem(unknown)
    assert problem is not None and "Bilinear" in problem
    with pytest.raises(ValueError, match=r"layer 1 \(Bilinear\) has no per-example"):
        ClippedGradients(unknown, 1.0, True)


@pytest.mark.parametrize("ghost", [True, False])
def test_gradients_too_large_to_square_in_float32_are_still_clipped(ghost: bool) -> None:
    """An exploding model's per-example gradients (norm ~1e20: its square overflows float32)
    are clipped to the bound, not turned into NaN."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    with torch.no_grad():
        module[2].weight.mul_(1e20)
    x, y = torch.randn(5, 8), torch.randint(0, 3, (5,))
    clipping = ClippedGradients(module, 0.5, ghost)
    clipping.backward(nn.functional.cross_entropy(module(x), y, reduction="none"))
    clipping.close()
    total = torch.sqrt(sum(p.grad.double().square().sum() for p in module.parameters()))
    assert torch.isfinite(total) and 0.5 < total <= 5 * 0.5 * (1 + 1e-5)
