"""Turning 28x28 uint8 image arrays into normalised image datasets (shared by MNIST and FMNIST)."""

import numpy as np
import torch

from fedcore.data.federated import DatasetInfo, FederatedDataset
from fedcore.data.split import Split

SIDE = 28
NUM_CLASSES = 10
ImagesAndLabels = tuple[np.ndarray, np.ndarray]


def image_dataset(
    name: str, train: ImagesAndLabels, test: ImagesAndLabels, mean: float, std: float
) -> FederatedDataset:
    """A 10-class 1x28x28 dataset, pixels scaled to [0, 1] then normalised by (mean, std)."""
    return FederatedDataset(
        info=DatasetInfo(name, "image", (1, SIDE, SIDE), NUM_CLASSES),
        train=_image_split(name, *train, mean, std),
        test=_image_split(name, *test, mean, std),
        natural_clients=None,
    )


def _image_split(
    name: str, pixels: np.ndarray, labels: np.ndarray, mean: float, std: float
) -> Split:
    if pixels.dtype != np.uint8 or pixels.shape[1:] != (SIDE, SIDE) or len(pixels) != len(labels):
        raise ValueError(
            f"{name}: expected uint8 images [n, {SIDE}, {SIDE}] with n labels, "
            f"got {pixels.dtype} {pixels.shape} and {labels.shape} labels"
        )
    if labels.size and labels.max() >= NUM_CLASSES:
        raise ValueError(f"{name}: label {labels.max()} is out of range 0..{NUM_CLASSES - 1}")
    scaled = pixels.astype(np.float32)
    scaled *= np.float32(1 / (255 * std))
    scaled -= np.float32(mean / std)
    x = torch.from_numpy(scaled).unsqueeze(1)
    return Split(x, torch.from_numpy(labels.astype(np.int64)))
