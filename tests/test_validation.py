"""Update validation: every reason an update is refused before it can touch the model, per
payload kind (dense, sparse by indices or by mask, seeds, metrics only)."""

import math

import pytest
import torch

from fedcore.messages import pack_bits
from fedcore.params import ModelLayout, ParamSpec
from fedcore.payloads import DenseDelta, SeedDelta, SparseDelta, all_finite, l2_norm
from fedcore.records import Task, Update
from fedcore.server.validation import UpdateRejected, ValidationPolicy, validate
from fedcore.strategies.base import Arrival, GlobalModel

LAYOUT = ModelLayout(
    ParamSpec.from_named([("w", torch.zeros(8))]), ParamSpec.from_named([("b", torch.zeros(2))])
)
TASK = Task(client_id=3, version=5, local_steps=4, hyper={"seed_pool": 16.0})
POLICY = ValidationPolicy(max_examples=1_000_000)


def _update(values=None, **changes):
    fields = {
        "client_id": 3,
        "base_version": 5,
        "num_examples": 10,
        "payload": DenseDelta(torch.zeros(8) if values is None else values),
        "buffers": torch.zeros(2),
    }
    return Update(**{**fields, **changes})


def _sparse(indices, values=None, dtype=torch.int64):
    values = torch.ones(len(indices)) if values is None else values
    return _update(payload=SparseDelta(values, indices=torch.tensor(indices, dtype=dtype)))


def _masked(bits, count):
    mask = pack_bits(torch.tensor(bits, dtype=torch.bool))
    return _update(payload=SparseDelta(torch.ones(count), mask=mask))


def _seeds(seeds, scalars=None):
    scalars = torch.ones(len(seeds)) if scalars is None else scalars
    return _update(payload=SeedDelta(torch.tensor(seeds, dtype=torch.int64), scalars))


@pytest.mark.parametrize(
    ("update", "expected", "reason"),
    [
        (_update(torch.zeros(9)), "dense", "length mismatch: dense delta has shape"),
        (_update(torch.zeros(8, dtype=torch.float64)), "dense", "wrong dtype"),
        (_update(torch.tensor([0.0] * 7 + [float("nan")])), "dense", "NaN or Inf"),
        (_update(torch.tensor([float("-inf")] + [0.0] * 7)), "dense", "NaN or Inf"),
        (_update(base_version=4), "dense", "based on version 4"),
        (
            _update(metrics={"train_loss": float("nan")}),
            "dense",
            "metric 'train_loss' is not finite",
        ),
        (_update(num_examples=10**9), "dense", "claimed example count 1000000000"),
        (_update(num_examples=0), "dense", "claimed example count 0"),
        (_update(buffers=torch.zeros(3)), "dense", "buffers must be 2 finite values"),
        (_update(buffers=torch.tensor([0.0, float("nan")])), "dense", "buffers must be 2"),
        (_update(), "sparse", "payload type dense, the task asked for sparse"),
        (_sparse([9]), "sparse", "index 9 out of range"),
        (_sparse([-1, 2]), "sparse", "index -1 out of range"),
        (_sparse([1, 1]), "sparse", "duplicate index 1 at position 1"),
        (_sparse([3, 1]), "sparse", "unsorted index 1 at position 1"),
        (_sparse([1, 2], torch.ones(3)), "sparse", "length mismatch: 2 sparse indices, 3 values"),
        (_sparse([1.0, 2.0], dtype=torch.float32), "sparse", "wrong dtype: sparse indices"),
        (_sparse([1, 2], torch.tensor([1.0, float("inf")])), "sparse", "NaN or Inf"),
        (_masked([1, 0, 1, 0, 0, 0, 0, 0], 3), "sparse", "mask selects 2 parameters, 3 values"),
        (
            _update(
                payload=SparseDelta(torch.ones(1), mask=torch.tensor([1, 1], dtype=torch.uint8))
            ),
            "sparse",
            "mask must be 1 uint8 bytes",
        ),
        (_seeds([2, 16]), "seeds", "index 16 out of range \\[0, 16\\)"),
        (_seeds([2, 2]), "seeds", "duplicate index 2"),
        (_seeds([1, 2, 3, 4, 5]), "seeds", "5 seed entries, more than the task's 4 steps"),
        (_seeds([1, 2], torch.tensor([1.0, float("nan")])), "seeds", "NaN or Inf"),
        (_seeds([1], torch.ones(1, dtype=torch.float64)), "seeds", "wrong dtype"),
        (_update(), "none", "payload type dense, the task asked for none"),
    ],
)
def test_rejections_name_their_reason(update, expected, reason):
    with pytest.raises(UpdateRejected, match=reason):
        validate(update, TASK, expected, LAYOUT, POLICY)


def test_a_seeds_payload_for_a_task_with_no_pool_is_refused():
    with pytest.raises(UpdateRejected, match="no seed pool"):
        validate(_seeds([1]), Task(client_id=3, version=5), "seeds", LAYOUT, POLICY)


def test_evaluation_replies_need_sound_metrics():
    reply = _update(payload=None, buffers=None, metrics={"eval_loss": 0.5, "eval_accuracy": 0.9})
    validate(reply, TASK, "none", LAYOUT, POLICY)
    with pytest.raises(UpdateRejected, match="evaluation reply needs a finite eval_accuracy"):
        validate(_update(payload=None, metrics={"eval_loss": 0.5}), TASK, "none", LAYOUT, POLICY)
    nan = {"eval_loss": float("nan"), "eval_accuracy": 0.5}
    with pytest.raises(UpdateRejected, match="metric 'eval_loss' is not finite"):
        validate(_update(payload=None, metrics=nan), TASK, "none", LAYOUT, POLICY)
    with pytest.raises(UpdateRejected, match="accuracy in \\[0, 1\\]"):
        bad = {"eval_loss": 0.5, "eval_accuracy": 1.5}
        validate(_update(payload=None, metrics=bad), TASK, "none", LAYOUT, POLICY)


def test_norm_bound_and_dense_forms():
    big = torch.full((8,), 10.0)
    with pytest.raises(UpdateRejected, match="norm"):
        validate(_update(big), TASK, "dense", LAYOUT, ValidationPolicy(max_delta_norm=5.0))
    validate(_update(big), TASK, "dense", LAYOUT, POLICY)
    model = GlobalModel(torch.zeros(8), torch.zeros(2), 5)
    sparse = _sparse([1, 6], torch.tensor([2.0, -1.0]))
    validate(sparse, TASK, "sparse", LAYOUT, POLICY)
    assert Arrival(sparse, model, 0).delta.tolist() == [0, 2, 0, 0, 0, 0, -1, 0]
    masked = _masked([0, 1, 0, 0, 0, 0, 1, 0], 2)
    validate(masked, TASK, "sparse", LAYOUT, POLICY)
    assert Arrival(masked, model, 0).delta.tolist() == [0, 1, 0, 0, 0, 0, 1, 0]
    seeds = _seeds([0, 15])
    validate(seeds, TASK, "seeds", LAYOUT, POLICY)
    with pytest.raises(ValueError, match="no dense form"):
        _ = Arrival(seeds, model, 0).delta


def test_all_finite_agrees_with_isfinite():
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        vector = torch.randn(100, generator=generator)
        position = int(torch.randint(100, (1,), generator=generator))
        vector[position] = [float("nan"), float("inf"), float("-inf"), 1.0][position % 4]
        assert all_finite(vector) == bool(torch.isfinite(vector).all())
    assert all_finite(torch.zeros(0))


@pytest.mark.parametrize("magnitude", [1e30, 1e-30, 1.0, 0.0])
def test_the_norm_is_finite_exactly_when_every_value_is(magnitude):
    """Values whose float32 squares overflow or underflow still get their true norm, and a
    single NaN or infinity makes it non-finite (the check validation relies on)."""
    vector = torch.full((1000,), magnitude)
    assert l2_norm(vector) == pytest.approx(magnitude * 1000**0.5, rel=1e-6)
    for bad in (float("nan"), float("inf"), float("-inf")):
        vector[417] = bad
        assert not math.isfinite(l2_norm(vector))
