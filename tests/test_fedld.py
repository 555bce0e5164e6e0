"""FedLD: the principal-direction kernel against the reference loop and its closed form, the
margin-control loss, and the strategy driven event by event."""

from __future__ import annotations

import pytest
import torch

from fedcore.clients.techniques.fedld import margin_loss
from fedcore.config import TrainingConfig
from fedcore.kernels.principal import principal_count, principal_mean, principal_revision
from fedcore.params import ModelLayout, ParamSpec
from fedcore.strategies.fedld import FedLD, FedLDConfig
from tests.harness import ScriptedContext

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def _reference_revision(stacked: torch.Tensor, k_fraction: float = 0.8) -> torch.Tensor:
    """A transliteration of the reference `pcgrad_svd` for one layer (Zeng-Shuang/FedLD `svd_tools.py`):
    svd of the scaled Gram, directions G^T E, majority sign, proj / ||proj|| rescaling."""
    grads = stacked.double()
    m = grads.shape[0]
    hessian = grads @ grads.t() / m
    _, s, e_t = torch.linalg.svd(hessian)
    directions = (grads.t() @ e_t.t()).t()
    k = int(m * k_fraction)
    for j in range(k):
        positive = sum(int(grads[i] @ directions[j] >= 0) for i in range(m))
        if positive < m - positive:
            directions[j] = -directions[j]
    revised = torch.zeros_like(grads)
    for i in range(m):
        for j in range(k):
            v = directions[j]
            projection = (grads[i] @ v) / (v @ v) * v
            revised[i] += projection * (s[j] / s.sum()) * grads[i].norm() / projection.norm()
    return revised


def _closed_form(stacked: torch.Tensor, k: int) -> torch.Tensor:
    """||d_i|| * sum_{j<k} sign(<d_i, v_j>) lam_j v_j with SVD directions, majority-signed."""
    grads = stacked.double()
    _, sigma, vh = torch.linalg.svd(grads, full_matrices=False)
    lam = sigma.square() / sigma.square().sum()
    revised = torch.zeros_like(grads)
    for j in range(min(k, len(sigma))):  # beyond the rank, sigma = 0 adds nothing
        v = vh[j]
        if int((grads @ v < 0).sum()) * 2 > grads.shape[0]:
            v = -v
        revised += grads.norm(dim=1, keepdim=True) * torch.sign(grads @ v)[:, None] * lam[j] * v
    return revised


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("m", "d"), [(5, 40), (6, 3), (12, 200)])
def test_revision_matches_the_reference_loop_and_the_closed_form(device, m, d):
    generator = torch.Generator().manual_seed(m * 1000 + d)
    stacked = torch.randn(m, d, generator=generator) + 0.3
    revised = principal_revision(stacked, [(0, d)], 0.8, device).cpu()
    reference = _reference_revision(stacked)
    assert torch.allclose(revised, reference, atol=1e-10, rtol=1e-9)
    closed = _closed_form(stacked, principal_count(m, 0.8))
    assert torch.allclose(revised, closed, atol=1e-10, rtol=1e-9)
    mean = principal_mean(stacked, [(0, d)], 0.8, device)
    assert mean.dtype == stacked.dtype and mean.device == stacked.device
    assert torch.allclose(mean.double(), reference.mean(dim=0), atol=1e-6)


def test_revised_updates_never_grow_and_shrink_by_the_spectrum():
    generator = torch.Generator().manual_seed(3)
    stacked = torch.randn(7, 50, generator=generator)
    revised = principal_revision(stacked, [(0, 50)], 0.8, "cpu")
    sigma = torch.linalg.svdvals(stacked.double())
    lam = sigma.square() / sigma.square().sum()
    k = principal_count(7, 0.8)
    expected = stacked.double().norm(dim=1) * lam[:k].square().sum().sqrt()
    assert torch.allclose(revised.norm(dim=1), expected, rtol=1e-9)
    assert bool((revised.norm(dim=1) <= stacked.double().norm(dim=1)).all())


def test_collinear_updates_reduce_to_plain_averaging():
    direction = torch.randn(64, generator=torch.Generator().manual_seed(0))
    scales = torch.tensor([0.5, 2.0, -1.0, 3.0, 0.25])
    stacked = scales[:, None] * direction[None, :]
    revised = principal_revision(stacked, [(0, 64)], 0.8, "cpu")
    assert torch.allclose(revised, stacked.double(), atol=1e-6)
    mean = principal_mean(stacked, [(0, 64)], 0.8, "cpu")
    assert torch.allclose(mean, stacked.mean(dim=0), atol=1e-6)


def test_identical_updates_return_the_update():
    update = torch.randn(33, generator=torch.Generator().manual_seed(1))
    stacked = update.repeat(4, 1)
    assert torch.allclose(principal_mean(stacked, [(0, 33)], 0.8, "cpu"), update, atol=1e-6)


def test_zero_and_orthogonal_updates_give_no_nan():
    zeros = torch.zeros(3, 10)
    assert torch.equal(principal_mean(zeros, [(0, 10)], 0.8, "cpu"), torch.zeros(10))
    with_zero = torch.randn(4, 10, generator=torch.Generator().manual_seed(2))
    with_zero[1] = 0.0
    revised = principal_revision(with_zero, [(0, 10)], 0.8, "cpu")
    assert torch.isfinite(revised).all() and torch.equal(revised[1], torch.zeros(10).double())
    # Orthogonal updates of norms 3 and 1: k = 1 keeps d_1's direction with lam = 9/10; d_2 is
    # orthogonal to it and contributes nothing (the reference divides 0 by 0 here).
    orthogonal = torch.zeros(2, 6)
    orthogonal[0, :2] = torch.tensor([3.0, 0.0])
    orthogonal[1, 4] = 1.0
    revised = principal_revision(orthogonal, [(0, 6)], 0.8, "cpu")
    assert torch.allclose(revised[0], orthogonal[0].double() * 0.9)
    assert torch.equal(revised[1], torch.zeros(6).double())
    mean = principal_mean(orthogonal, [(0, 6)], 0.8, "cpu")
    assert torch.allclose(mean, orthogonal[0] * 0.45)


def test_single_client_keeps_its_update_and_blocks_are_independent():
    update = torch.randn(1, 20, generator=torch.Generator().manual_seed(4))
    assert principal_count(1, 0.8) == 1
    assert torch.allclose(principal_mean(update, [(0, 20)], 0.8, "cpu"), update[0], atol=1e-6)
    stacked = torch.randn(5, 30, generator=torch.Generator().manual_seed(5))
    bounds = [(0, 12), (12, 13), (13, 30)]
    blockwise = torch.cat([_reference_revision(stacked[:, a:b]) for a, b in bounds], dim=1)
    assert torch.allclose(principal_revision(stacked, bounds, 0.8, "cpu"), blockwise, atol=1e-10)
    whole = _reference_revision(stacked)
    assert not torch.allclose(blockwise, whole, atol=1e-3), "per layer is not whole-vector"


def test_sign_calibration_cancels_so_the_sign_eigh_returns_does_not_matter(monkeypatch):
    """Two-two ties in the majority vote on both directions: the reference keeps the SVD's
    arbitrary sign there, yet sign(<d, -v>) (-v) = sign(<d, v>) v leaves the result unchanged."""
    stacked = torch.tensor([[1.0, 0.1], [1.0, -0.1], [-0.2, 1.0], [-0.2, -1.0]])
    mean = principal_mean(stacked, [(0, 2)], 1.0, "cpu")
    eigh = torch.linalg.eigh

    def flipped(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values, vectors = eigh(matrix)
        return values, -vectors

    monkeypatch.setattr(torch.linalg, "eigh", flipped)
    assert torch.allclose(principal_mean(stacked, [(0, 2)], 1.0, "cpu"), mean, atol=1e-7)
    permuted = principal_mean(stacked[[2, 0, 3, 1]], [(0, 2)], 1.0, "cpu")
    assert torch.allclose(permuted, mean, atol=1e-7)


def test_margin_loss_batch_and_per_sample_norms():
    logits = torch.randn(8, 5, generator=torch.Generator().manual_seed(6), requires_grad=True)
    labels = torch.arange(8) % 5
    ce = torch.nn.functional.cross_entropy(logits, labels)
    probs = torch.softmax(logits, dim=1)
    batch = margin_loss(logits, labels, 0.1, per_sample=False)
    frobenius = torch.linalg.matrix_norm(probs)
    assert torch.allclose(batch, ce + 0.1 * torch.log(1 + frobenius**2))
    sample = margin_loss(logits, labels, 0.1, per_sample=True)
    per_row = torch.log(1 + torch.linalg.vector_norm(probs, dim=1) ** 2).mean()
    assert torch.allclose(sample, ce + 0.1 * per_row)
    assert torch.equal(margin_loss(logits, labels, 0.0, per_sample=False), ce)
    batch.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def _multi_layer_context(strategy: FedLD, clients: int) -> ScriptedContext:
    start = torch.randn(30, generator=torch.Generator().manual_seed(7))
    ctx = ScriptedContext(strategy, start, clients)
    named = [("weight", torch.zeros(4, 5)), ("bias", torch.zeros(10))]
    ctx._layout = ModelLayout(ParamSpec.from_named(named), ParamSpec(()))
    return ctx


def test_fedld_round_applies_the_revision_per_tensor_and_carries_the_margin():
    strategy = FedLD(FedLDConfig(clients_per_round=4, margin_lambda=0.1, norm_bound=0), seed=0)
    ctx = _multi_layer_context(strategy, clients=6)
    strategy.on_start()
    assert all(t.hyper["margin_lambda"] == pytest.approx(0.1) for t in ctx.tasks)
    assert all(t.hyper["margin_per_sample"] == 0.0 for t in ctx.tasks)
    generator = torch.Generator().manual_seed(8)
    deltas = {t.client_id: torch.randn(30, generator=generator) for t in ctx.tasks}
    for task in reversed(list(ctx.tasks)):
        ctx.arrive(task, deltas[task.client_id], examples=10 + task.client_id)
    stacked = torch.stack([deltas[c] for c in sorted(deltas)])
    expected = torch.cat(
        [_reference_revision(stacked[:, :20]), _reference_revision(stacked[:, 20:])], dim=1
    ).mean(dim=0)
    assert ctx.model.version == 1
    assert torch.allclose(ctx.model.params.double(), ctx.history[0].params.double() + expected)
    assert ctx.infos[0]["participants"] == 4


def test_fedld_partial_cohort_at_the_deadline_and_plain_rounds():
    config = FedLDConfig(
        clients_per_round=4, round_timeout=5.0, min_fraction=0.5, plain_rounds=1, norm_bound=0
    )
    strategy = FedLD(config, seed=1)
    ctx = ScriptedContext(strategy, torch.zeros(16), clients=6)
    strategy.on_start()
    generator = torch.Generator().manual_seed(9)
    first = [torch.randn(16, generator=generator) for _ in range(2)]
    ctx.arrive(ctx.tasks[0], first[0])
    ctx.arrive(ctx.tasks[1], first[1])
    ctx.clock = 5.0
    strategy.on_timer("round-deadline-1")
    assert torch.allclose(ctx.model.params, (first[0] + first[1]) / 2), "round 1 is plain"
    tasks = ctx.tasks[4:]
    assert len(tasks) == 4 and all(t.version == 1 for t in tasks)
    second = [torch.randn(16, generator=generator) for _ in range(3)]
    for task, delta in zip(tasks[:3], second, strict=True):
        ctx.arrive(task, delta)
    ctx.clock = 10.0
    strategy.on_timer("round-deadline-2")
    ordered = [d for _, d in sorted(zip([t.client_id for t in tasks[:3]], second, strict=True))]
    expected = _reference_revision(torch.stack(ordered)).mean(dim=0)
    assert ctx.model.version == 2
    assert torch.allclose(ctx.model.params.double(), ctx.history[1].params.double() + expected)


def test_fedld_state_round_trip_continues_identically():
    def fresh() -> tuple[FedLD, ScriptedContext, list[dict]]:
        config = FedLDConfig(clients_per_round=3, training=TrainingConfig(local_steps=2))
        strategy = FedLD(config, seed=11)
        ctx = ScriptedContext(strategy, torch.zeros(12), clients=3)
        return strategy, ctx, ctx.states

    def play(ctx: ScriptedContext, rounds: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        for _ in range(rounds):
            for task in [t for t in ctx.tasks if t.version == ctx.model.version]:
                ctx.arrive(task, torch.randn(12, generator=generator))

    strategy, ctx, states = fresh()
    strategy.on_start()
    play(ctx, 2, seed=0)
    play(ctx, 2, seed=1)
    restored, other, _ = fresh()
    restored.load_state_dict(states[1])
    other._model = ctx.history[2]
    other.history = ctx.history[:3]
    restored.on_start()
    play(other, 2, seed=1)
    assert [t.seed for t in other.tasks] == [t.seed for t in ctx.tasks[6:]]
    assert torch.equal(other.model.params, ctx.model.params)
    assert other.model.version == ctx.model.version == 4
