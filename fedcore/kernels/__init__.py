"""Aggregation kernels over flat tensors, with a CPU path and a CUDA path chosen at run time."""

from fedcore.kernels.accumulate import StreamingAccumulator, weighted_sum
from fedcore.kernels.device import resolve_device

__all__ = ["StreamingAccumulator", "resolve_device", "weighted_sum"]
