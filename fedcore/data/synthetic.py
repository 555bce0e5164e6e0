"""A tiny deterministic dataset of Gaussian class blobs, for unit tests and benchmarks."""

import numpy as np
import torch

from fedcore.data.federated import DatasetInfo, FederatedDataset
from fedcore.data.split import Split


def load_synthetic(
    num_train: int = 2000,
    num_test: int = 500,
    in_features: int = 20,
    num_classes: int = 10,
    noise: float = 1.0,
    seed: int = 0,
) -> FederatedDataset:
    """Balanced classes around N(0, I) centres with N(0, noise^2 I) scatter; linearly learnable."""
    if min(num_train, num_test, in_features) < 1 or num_classes < 2:
        raise ValueError(
            "synthetic needs num_train, num_test, in_features >= 1 and num_classes >= 2, got "
            f"{num_train}, {num_test}, {in_features}, {num_classes}"
        )
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_classes, in_features))

    def blobs(count: int) -> Split:
        labels = rng.permutation(np.arange(count) % num_classes)
        points = centres[labels] + noise * rng.standard_normal((count, in_features))
        return Split(torch.from_numpy(points.astype(np.float32)), torch.from_numpy(labels))

    return FederatedDataset(
        info=DatasetInfo("synthetic", "tabular", (in_features,), num_classes),
        train=blobs(num_train),
        test=blobs(num_test),
        natural_clients=None,
    )
