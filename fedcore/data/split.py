"""Split: one dataset split held as tensors in memory, batched by index without a DataLoader."""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

ExampleIds = torch.Tensor | np.ndarray | Sequence[int]


@dataclass(frozen=True, eq=False)
class Split:
    """Examples held as tensors in memory; batches are gathered by index (no DataLoader/workers).

    `index`, when set, maps example number to row of `x`/`y`, so splits can share storage.
    """

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.y.dtype != torch.int64 or self.y.dim() != 1:
            raise ValueError(
                f"y must be a 1-D int64 tensor, got {self.y.dtype} {tuple(self.y.shape)}"
            )
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x has {self.x.shape[0]} rows but y has {self.y.shape[0]}")
        if self.index is None:
            return
        if self.index.dtype != torch.int64 or self.index.dim() != 1:
            raise ValueError(f"index must be a 1-D int64 tensor, got {self.index.dtype}")
        if len(self.index):
            low, high = (int(end) for end in torch.aminmax(self.index))
            if low < 0 or high >= len(self.y):
                raise ValueError(f"index entries must lie in [0, {len(self.y)})")

    def __len__(self) -> int:
        return len(self.y) if self.index is None else len(self.index)

    def _rows(self, idx: ExampleIds) -> torch.Tensor:
        ids = torch.as_tensor(idx, dtype=torch.int64)
        return ids if self.index is None else self.index[ids]

    def batch(self, idx: ExampleIds) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and labels of the given example numbers (a fresh gathered copy)."""
        rows = self._rows(idx)
        return self.x[rows], self.y[rows]

    def labels(self) -> np.ndarray:
        """The int64 label of every example, in example order (what partitioners need)."""
        labels = self.y.clone() if self.index is None else self.y[self.index]
        return labels.numpy()

    def subset(self, idx: ExampleIds) -> "Split":
        """A Split of just these example numbers, sharing this one's storage."""
        return Split(self.x, self.y, self._rows(idx))

    def sample(self, count: int, seed: Sequence[int]) -> "Split":
        """A fixed sample of at most `count` examples drawn by `seed`, in example order (the
        whole split when `count` is 0 or not smaller): evaluation on it costs a bounded amount."""
        if not count or count >= len(self):
            return self
        keep = np.sort(np.random.default_rng(list(seed)).choice(len(self), count, replace=False))
        return self.subset(torch.from_numpy(keep))
