"""A dataset split among clients, computed identically by the simulation, the server and each
deployed client from the same config (a pure function of dataset, partition options and seed)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedcore.config import ExperimentConfig
from fedcore.data import FederatedDataset, Split, holdout_split, load_dataset, partition
from fedcore.models import build_model, default_model
from fedcore.typed_config import ConfigError


@dataclass
class Federation:
    """A dataset split among clients: each client's training and hold-out example numbers, and
    the training examples carved off for the server before partitioning (`server_part`)."""

    dataset: FederatedDataset
    train_parts: list[np.ndarray]
    holdout_parts: list[np.ndarray]
    server_part: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def train_split(self, client_id: int) -> Split:
        """Client `client_id`'s training examples (a view, made on demand)."""
        return self.dataset.train.subset(self.train_parts[client_id])

    def holdout_split(self, client_id: int) -> Split:
        """Client `client_id`'s evaluation hold-out."""
        return self.dataset.train.subset(self.holdout_parts[client_id])

    def server_split(self) -> Split:
        """The training examples carved off for the server (empty when none were)."""
        return self.dataset.train.subset(self.server_part)


def make_federation(config: ExperimentConfig) -> Federation:
    """Load the dataset and partition it as configured."""
    dataset = load_dataset(config.dataset.name, **config.dataset.options)
    spec = config.partition
    if spec.scheme == "natural" and dataset.natural_clients is None:
        raise ConfigError(
            f"partition.scheme: dataset {config.dataset.name!r} has no natural clients"
        )
    labels = dataset.train.labels()
    server_part, pool = _carve_per_class(
        labels, config.server_data.examples_per_class, seed=config.seed + 2
    )
    natural = dataset.natural_clients
    if natural is not None and len(server_part):
        natural = [np.searchsorted(pool, c[np.isin(c, pool)]) for c in natural]
    try:
        parts = partition(
            labels[pool],
            config.num_clients,
            spec.scheme,
            seed=config.seed,
            alpha=spec.alpha,
            shards_per_client=spec.shards_per_client,
            min_size=spec.min_size,
            natural=natural,
        )
    except ValueError as error:
        raise ConfigError(f"partition: {error}") from None
    train, holdout = holdout_split([pool[p] for p in parts], spec.holdout, seed=config.seed + 1)
    return Federation(dataset, train, holdout, server_part)


def _carve_per_class(
    labels: np.ndarray, per_class: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(carved, rest) sorted example numbers: `per_class` random examples of each class, but at
    most half of a class, so that clients still see every class."""
    everything = np.arange(len(labels), dtype=np.int64)
    if per_class == 0:
        return np.zeros(0, dtype=np.int64), everything
    rng = np.random.default_rng(seed)
    by_class = np.argsort(labels, kind="stable").astype(np.int64, copy=False)
    counts = np.unique(labels, return_counts=True)[1]
    carved = [
        rng.choice(members, size=min(per_class, len(members) // 2), replace=False)
        for members in np.split(by_class, np.cumsum(counts)[:-1])
    ]
    chosen = np.sort(np.concatenate(carved))
    return chosen, np.setdiff1d(everything, chosen, assume_unique=True)


def server_data(config: ExperimentConfig, federation: Federation) -> Split | None:
    """The server's own data set as configured: loaded from `server_data.path`, else the carved
    training examples; None when the config asks for none."""
    if config.server_data.path:
        return load_npz_split(Path(config.server_data.path), federation.dataset, "server_data.path")
    return federation.server_split() if len(federation.server_part) else None


def load_npz_split(path: Path, dataset: FederatedDataset, what: str) -> Split:
    """An .npz of `x` (examples in the dataset's input shape) and `y` (labels), checked; errors
    name `what` (the config key or option that gave the path)."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            x, y = arrays["x"], arrays["y"]
    except (OSError, KeyError, ValueError) as error:
        raise ConfigError(f"{what}: cannot read arrays x and y from {path}: {error}") from None
    return arrays_split(x, y, dataset, what)


def arrays_split(x: np.ndarray, y: np.ndarray, dataset: FederatedDataset, what: str) -> Split:
    """A Split of user-supplied arrays, checked against the dataset the model is built for."""
    info = dataset.info
    if tuple(x.shape[1:]) != info.input_shape or y.shape != (len(x),) or not len(x):
        raise ConfigError(
            f"{what}: want x of shape [n >= 1, *{info.input_shape}] and y of shape [n], got "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= info.num_classes:
        raise ConfigError(f"{what}: y must hold integer labels in [0, {info.num_classes})")
    return Split(
        torch.as_tensor(x, dtype=dataset.train.x.dtype), torch.as_tensor(y, dtype=torch.int64)
    )


def model_builder(config: ExperimentConfig, dataset: FederatedDataset) -> Callable[[], nn.Module]:
    """A zero-argument constructor of the configured model (picklable for worker processes)."""
    name = config.model.name
    if name == "auto":
        name = default_model(dataset.info)
    return partial(build_model, name, dataset.info, **config.model.options)
