"""What a loaded dataset is: its description plus train/test splits and any natural clients."""

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from fedcore.data.split import Split

DatasetKind = Literal["image", "text", "tabular"]


@dataclass(frozen=True)
class DatasetInfo:
    """The facts a model builder needs about a dataset: kind, input shape, classes, vocabulary."""

    name: str
    kind: DatasetKind
    input_shape: tuple[int, ...]
    num_classes: int
    vocab_size: int = 0


@dataclass(frozen=True, eq=False)
class FederatedDataset:
    """A dataset ready for federation; natural_clients: each natural client's train examples."""

    info: DatasetInfo
    train: Split
    test: Split
    natural_clients: list[np.ndarray] | None

    def __post_init__(self) -> None:
        for split in (self.train, self.test):
            if tuple(split.x.shape[1:]) != self.info.input_shape:
                raise ValueError(
                    f"{self.info.name}: split rows have shape {tuple(split.x.shape[1:])}, "
                    f"info says {self.info.input_shape}"
                )


def consecutive_clients(sizes: Sequence[int]) -> list[np.ndarray]:
    """Example numbers per client when clients' examples are stored back to back in this order."""
    bounds = np.cumsum([0, *sizes])
    return [np.arange(start, stop) for start, stop in itertools.pairwise(bounds)]
