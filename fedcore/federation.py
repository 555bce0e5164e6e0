"""A dataset split among clients, computed identically by the simulation, the server and each
deployed client from the same config (a pure function of dataset, partition options and seed)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
from torch import nn

from fedcore.config import ExperimentConfig
from fedcore.data import FederatedDataset, Split, holdout_split, load_dataset, partition
from fedcore.models import build_model, default_model
from fedcore.typed_config import ConfigError


@dataclass
class Federation:
    """A dataset split among clients: each client's training and hold-out example numbers."""

    dataset: FederatedDataset
    train_parts: list[np.ndarray]
    holdout_parts: list[np.ndarray]

    def train_split(self, client_id: int) -> Split:
        """Client `client_id`'s training examples (a view, made on demand)."""
        return self.dataset.train.subset(self.train_parts[client_id])

    def holdout_split(self, client_id: int) -> Split:
        """Client `client_id`'s evaluation hold-out."""
        return self.dataset.train.subset(self.holdout_parts[client_id])


def make_federation(config: ExperimentConfig) -> Federation:
    """Load the dataset and partition it as configured."""
    dataset = load_dataset(config.dataset.name, **config.dataset.options)
    spec = config.partition
    if spec.scheme == "natural" and dataset.natural_clients is None:
        raise ConfigError(
            f"partition.scheme: dataset {config.dataset.name!r} has no natural clients"
        )
    try:
        parts = partition(
            dataset.train.labels(),
            config.num_clients,
            spec.scheme,
            seed=config.seed,
            alpha=spec.alpha,
            shards_per_client=spec.shards_per_client,
            min_size=spec.min_size,
            natural=dataset.natural_clients,
        )
    except ValueError as error:
        raise ConfigError(f"partition: {error}") from None
    train, holdout = holdout_split(parts, spec.holdout, seed=config.seed + 1)
    return Federation(dataset, train, holdout)


def model_builder(config: ExperimentConfig, dataset: FederatedDataset) -> Callable[[], nn.Module]:
    """A zero-argument constructor of the configured model (picklable for worker processes)."""
    name = config.model.name
    if name == "auto":
        name = default_model(dataset.info)
    return partial(build_model, name, dataset.info, **config.model.options)
