"""Aggregation kernels: streaming equals batch, hierarchical partials are exact, CUDA matches CPU."""

import pytest
import torch

from fedcore.kernels import StreamingAccumulator, resolve_device, weighted_sum


def _updates(n=13, p=10_001, dtype=torch.float32):
    generator = torch.Generator().manual_seed(3)
    return torch.randn(n, p, generator=generator, dtype=dtype), torch.rand(
        n, generator=generator
    ) * 100


def test_streaming_accumulator_equals_batch_result():
    stacked, weights = _updates()
    acc = StreamingAccumulator(stacked.shape[1])
    for row, weight in zip(stacked, weights, strict=True):
        acc.add(row, float(weight))
    batch = weighted_sum(stacked, weights) / weights.sum()
    reference = (stacked.double() * weights.double()[:, None]).sum(0) / weights.double().sum()
    assert torch.allclose(acc.mean().double(), reference, atol=1e-6, rtol=1e-5)
    assert torch.allclose(batch.double(), reference, atol=1e-6, rtol=1e-5)
    assert acc.count == len(weights)


def test_hierarchical_partials_are_exact_in_float64_and_order_free():
    stacked, weights = _updates(dtype=torch.float64)
    integral = torch.round(stacked * 1024)  # exactly representable sums: order cannot matter
    flat = StreamingAccumulator(stacked.shape[1], dtype=torch.float64)
    for row, weight in zip(integral, weights.round(), strict=True):
        flat.add(row, float(weight))
    left = StreamingAccumulator(stacked.shape[1], dtype=torch.float64)
    right = StreamingAccumulator(stacked.shape[1], dtype=torch.float64)
    for i in reversed(range(len(weights))):
        (left if i % 2 else right).add(integral[i], float(weights.round()[i]))
    left.merge(right)
    assert torch.equal(left.sum, flat.sum) and left.weight == flat.weight


def test_mean_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="no vectors"):
        StreamingAccumulator(3).mean()
    with pytest.raises(ValueError, match="does not fit"):
        StreamingAccumulator(3).add(torch.zeros(4), 1.0)


def test_device_resolution_falls_back_clearly():
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="unsupported kernel device"):
        resolve_device("mps")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_streaming_matches_cpu():
    stacked, weights = _updates(n=20, p=1_000_003)
    cpu = StreamingAccumulator(stacked.shape[1])
    gpu = StreamingAccumulator(stacked.shape[1], device="cuda")
    for row, weight in zip(stacked, weights, strict=True):
        cpu.add(row, float(weight))
        gpu.add(row, float(weight))
    assert torch.allclose(gpu.mean().cpu(), cpu.mean(), atol=1e-6, rtol=1e-5)
    on_device = weighted_sum(stacked.cuda(), weights.cuda()).cpu()
    assert torch.allclose(on_device, weighted_sum(stacked, weights), atol=1e-4, rtol=1e-5)


def test_reset_empties_in_place():
    acc = StreamingAccumulator(4)
    acc.add(torch.ones(4), 2.0)
    storage = acc.sum.data_ptr()
    acc.reset()
    assert acc.count == 0 and acc.weight == 0.0 and acc.sum.data_ptr() == storage
    acc.add(torch.full((4,), 3.0), 1.0)
    assert torch.equal(acc.mean(), torch.full((4,), 3.0))


def test_a_sparse_fold_gives_the_bits_of_the_dense_fold() -> None:
    """Top-k and dense clients of one round fold alike: a sparse update adds exactly what its
    dense form would, shrink scale included, into a sum that already holds other updates."""
    generator = torch.Generator().manual_seed(5)
    numel = 200_003
    earlier = torch.randn(numel, generator=generator)
    positions = torch.randperm(numel, generator=generator)[: numel // 7].sort().values
    values = torch.randn(positions.numel(), generator=generator)
    dense_form = torch.zeros(numel)
    dense_form[positions] = values
    dense, sparse = StreamingAccumulator(numel), StreamingAccumulator(numel)
    for accumulator in (dense, sparse):
        accumulator.add(earlier, 317.0)
    dense.add(dense_form, 211.0, scale=0.73)
    sparse.add_sparse(positions, values, 211.0, scale=0.73)
    assert torch.equal(dense.sum, sparse.sum)
    assert (dense.weight, dense.count) == (sparse.weight, sparse.count)


def test_a_mean_formed_in_place_and_released_survives_the_next_round() -> None:
    accumulator = StreamingAccumulator(5)
    accumulator.add(torch.arange(5.0), 2.0)
    mean = accumulator.mean(in_place=True)
    assert mean.data_ptr() == accumulator.sum.data_ptr()
    assert torch.equal(mean, torch.arange(5.0))
    with pytest.raises(RuntimeError, match="reset"):
        accumulator.add(torch.ones(5), 1.0)
    accumulator.release()
    accumulator.reset()
    accumulator.add(torch.ones(5), 1.0)
    assert torch.equal(mean, torch.arange(5.0))
    assert torch.equal(accumulator.mean(), torch.ones(5))
