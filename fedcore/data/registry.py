"""load_dataset: the one entry point that maps a dataset name to its loader."""

from collections.abc import Callable

from fedcore.data.federated import FederatedDataset
from fedcore.data.fmnist import load_fmnist
from fedcore.data.heart import load_heart
from fedcore.data.mnist import load_mnist
from fedcore.data.shakespeare import load_shakespeare
from fedcore.data.synthetic import load_synthetic

_LOADERS: dict[str, Callable[..., FederatedDataset]] = {
    "mnist": load_mnist,
    "fmnist": load_fmnist,
    "shakespeare": load_shakespeare,
    "heart": load_heart,
    "synthetic": load_synthetic,
}
#: The datasets fedcore ships (plug-ins may register more: `register_dataset`).
DATASETS = tuple(_LOADERS)


def register_dataset(name: str, loader: Callable[..., FederatedDataset]) -> None:
    """Make `dataset.name=NAME` load `loader(**dataset.options)` (a plug-in's dataset,
    docs/extending.md); it must give the same data on every call with the same options."""
    if name in _LOADERS:
        raise ValueError(f"dataset {name!r} is already registered")
    _LOADERS[name] = loader


def load_dataset(name: str, **options: object) -> FederatedDataset:
    """Load dataset `name` with its loader's keyword options; deterministic for given options.

    Raises ValueError for an unknown name, DatasetUnavailable when its data package is missing.
    """
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(_LOADERS)}")
    return _LOADERS[name](**options)
