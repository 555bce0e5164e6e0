"""fedcore.data: offline datasets as in-memory splits, and partitioning them among clients."""

from fedcore.data.federated import DatasetInfo, FederatedDataset
from fedcore.data.packages import DatasetUnavailable
from fedcore.data.partition import SCHEMES, holdout_split, partition
from fedcore.data.registry import DATASETS, load_dataset, register_dataset
from fedcore.data.split import Split

__all__ = [
    "DATASETS",
    "SCHEMES",
    "DatasetInfo",
    "DatasetUnavailable",
    "FederatedDataset",
    "Split",
    "holdout_split",
    "load_dataset",
    "partition",
    "register_dataset",
]
