"""Weighted sums of client vectors: the FedAvg kernel, in streaming and batch form.

Both are memory-bandwidth bound (about 0.5 FLOP per byte), so the streaming form keeps one
O(P) accumulator and reads each arriving update exactly once, in one fused multiply-add over the
whole vector; the batch form over a stacked [N, P] block is one GEMV. On CUDA, host vectors are
staged through pinned memory and copied asynchronously so that transfers overlap the previous
fold.
"""

from __future__ import annotations

import torch


class StreamingAccumulator:
    """Running (sum of w_i * x_i, sum of w_i) over vectors that arrive one at a time."""

    def __init__(
        self, numel: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> None:
        self.device = torch.device(device)
        self._sum = torch.zeros(numel, dtype=dtype, device=self.device)
        self.weight = 0.0
        self.count = 0
        self._divided = False
        self._released = False
        self._staging: list[tuple[torch.Tensor, torch.cuda.Event]] = []

    def reset(self) -> None:
        """Empty the accumulator: in place, or, after `release()`, by allocating new storage
        when the next vector arrives (so that it never coexists with what released it)."""
        if not self._released:
            self._sum.zero_()
        self.weight = 0.0
        self.count = 0
        self._divided = False

    def release(self) -> None:
        """Give up the sum's storage, which the caller now owns (a mean formed in place that
        became the new model); nothing may be added before `reset()`."""
        self._released = self._divided = True

    @property
    def sum(self) -> torch.Tensor:
        """The running weighted sum (zeros, in new storage, once released and reset)."""
        if self._released:
            self._sum = torch.zeros_like(self._sum)
            self._released = False
        return self._sum

    def add(self, vector: torch.Tensor, weight: float, scale: float = 1.0) -> None:
        """Fold `weight * scale * vector` into the running sum and `weight` into the total (a
        `scale` below 1 shrinks a vector without changing its share): one fused multiply-add,
        so the bits depend on the order of the adds, which callers fix (client order)."""
        if self._divided:
            raise RuntimeError("reset() the accumulator before adding: its sum became a mean")
        if vector.shape != self._sum.shape:
            raise ValueError(
                f"vector of shape {tuple(vector.shape)} does not fit {tuple(self._sum.shape)}"
            )
        self.sum.add_(self._on_device(vector), alpha=weight * scale)
        self.weight += weight
        self.count += 1

    def add_sparse(
        self, positions: torch.Tensor, values: torch.Tensor, weight: float, scale: float = 1.0
    ) -> None:
        """Fold `weight * scale * values` in at distinct `positions`: the same fused
        multiply-add as `add` on the gathered sums, so the same bits as `add` of the dense
        vector that is zero elsewhere, reading only the non-zeros."""
        if self._divided:
            raise RuntimeError("reset() the accumulator before adding: its sum became a mean")
        if positions.shape != values.shape or positions.dim() != 1:
            raise ValueError("sparse fold needs 1-D positions and values of the same length")
        total = self.sum
        on_device = positions.to(self.device)
        gathered = total.index_select(0, on_device)
        gathered.add_(self._on_device(values), alpha=weight * scale)
        total.index_copy_(0, on_device, gathered)
        self.weight += weight
        self.count += 1

    def merge(self, other: StreamingAccumulator) -> None:
        """Fold another partial (sum, weight) in: the exact step of hierarchical aggregation."""
        if self._divided:
            raise RuntimeError("reset() the accumulator before merging: its sum became a mean")
        self.sum.add_(other.sum.to(self.device))
        self.weight += other.weight
        self.count += other.count

    def mean(self, in_place: bool = False) -> torch.Tensor:
        """The weighted mean of everything added; an error if nothing was. `in_place` divides
        the running sum itself (no new O(P) tensor): the result is then the accumulator's own
        storage, for reading until the next `reset()`, and nothing more may be added."""
        if self.count == 0 or self.weight <= 0.0:
            raise ValueError("weighted mean of no vectors (or of zero total weight)")
        if not in_place:
            return self.sum / self.weight
        self._divided = True
        return self.sum.div_(self.weight)

    def _on_device(self, vector: torch.Tensor) -> torch.Tensor:
        if vector.device == self.device:
            return vector if vector.dtype == self._sum.dtype else vector.to(self._sum.dtype)
        if self.device.type == "cuda" and vector.device.type == "cpu":
            return self._upload(vector)
        return vector.to(self.device, self._sum.dtype)

    def _upload(self, vector: torch.Tensor) -> torch.Tensor:
        """Copy a host vector through one of two pinned buffers: filling one overlaps the
        device copy out of the other."""
        if not self._staging or self._staging[0][0].dtype != vector.dtype:
            self._staging = [
                (torch.empty(vector.shape, dtype=vector.dtype, pin_memory=True), torch.cuda.Event())
                for _ in range(2)
            ]
        buffer, copied = self._staging[self.count % 2]
        copied.synchronize()
        buffer.copy_(vector)
        on_device = buffer.to(self.device, non_blocking=True)
        copied.record()
        return on_device.to(self._sum.dtype)


def weighted_sum(stacked: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_i weights[i] * stacked[i] for stacked [N, P] vectors, as one GEMV on their device."""
    if stacked.dim() != 2 or weights.shape != (stacked.shape[0],):
        raise ValueError(
            f"want stacked [N, P] and weights [N], got {tuple(stacked.shape)} "
            f"and {tuple(weights.shape)}"
        )
    return torch.mv(stacked.t(), weights.to(stacked.device, stacked.dtype))
