"""Update validation: every reason an update is refused before it can touch the model."""

import pytest
import torch

from fedcore.params import ModelLayout, ParamSpec
from fedcore.records import DenseDelta, SparseDelta, Task, Update
from fedcore.server.validation import UpdateRejected, ValidationPolicy, all_finite, validate

LAYOUT = ModelLayout(
    ParamSpec.from_named([("w", torch.zeros(8))]), ParamSpec.from_named([("b", torch.zeros(2))])
)
TASK = Task(client_id=3, version=5)


def _update(values=None, **changes):
    fields = {
        "client_id": 3,
        "base_version": 5,
        "num_examples": 10,
        "payload": DenseDelta(torch.zeros(8) if values is None else values),
        "buffers": torch.zeros(2),
    }
    return Update(**{**fields, **changes})


@pytest.mark.parametrize(
    ("update", "reason"),
    [
        (_update(torch.zeros(9)), "payload does not fit the model"),
        (_update(torch.zeros(8, dtype=torch.float64)), "dtype"),
        (_update(torch.tensor([0.0] * 7 + [float("nan")])), "NaN or Inf"),
        (_update(torch.tensor([float("-inf")] + [0.0] * 7)), "NaN or Inf"),
        (_update(base_version=4), "based on version 4"),
        (_update(num_examples=10**9), "claimed example count 1000000000"),
        (_update(num_examples=0), "claimed example count 0"),
        (_update(buffers=torch.zeros(3)), "buffers must be 2 finite values"),
        (_update(buffers=torch.tensor([0.0, float("nan")])), "buffers must be 2 finite values"),
        (
            _update(payload=SparseDelta(torch.tensor([9]), torch.tensor([1.0]))),
            "index out of range",
        ),
    ],
)
def test_rejections_name_their_reason(update, reason):
    with pytest.raises(UpdateRejected, match=reason):
        validate(update, TASK, LAYOUT, ValidationPolicy(max_examples=1_000_000))


def test_norm_bound_and_acceptance():
    big = torch.full((8,), 10.0)
    with pytest.raises(UpdateRejected, match="norm"):
        validate(_update(big), TASK, LAYOUT, ValidationPolicy(max_delta_norm=5.0))
    assert torch.equal(validate(_update(big), TASK, LAYOUT, ValidationPolicy()), big)
    sparse = _update(payload=SparseDelta(torch.tensor([1, 6]), torch.tensor([2.0, -1.0])))
    assert validate(sparse, TASK, LAYOUT, ValidationPolicy()).tolist() == [0, 2, 0, 0, 0, 0, -1, 0]


def test_all_finite_agrees_with_isfinite():
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        vector = torch.randn(100, generator=generator)
        position = int(torch.randint(100, (1,), generator=generator))
        vector[position] = [float("nan"), float("inf"), float("-inf"), 1.0][position % 4]
        assert all_finite(vector) == bool(torch.isfinite(vector).all())
    assert all_finite(torch.zeros(0))
