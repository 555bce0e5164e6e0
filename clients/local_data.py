"""The client's own data instead of its partition of a shared dataset (`fedcore client --data`).

Two forms: a path to an `.npz` file with arrays `x` (examples, in the input shape of the
dataset the experiment's model is built for) and `y` (integer labels); or `module:function`, a
function importable on the client that takes the `DatasetInfo` and returns `(x, y)` as numpy
arrays, for data that has to be read or prepared by code. Either way the arrays are checked
against the dataset's input shape and class count before the client joins.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from fedcore.data import FederatedDataset, Split
from fedcore.federation import arrays_split, load_npz_split
from fedcore.typed_config import ConfigError

OPTION = "--data"


def load_local_data(spec: str, dataset: FederatedDataset) -> Split:
    """The Split `spec` names: an existing .npz path, else a `module:function` hook."""
    if spec.endswith(".npz") or Path(spec).exists():
        return load_npz_split(Path(spec), dataset, OPTION)
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise ConfigError(f"{OPTION}: {spec!r} is neither an .npz file nor module:function")
    try:
        hook = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"{OPTION}: cannot load {spec}: {error}") from None
    result = hook(dataset.info)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise ConfigError(f"{OPTION}: {spec} must return (x, y) arrays")
    return arrays_split(np.asarray(result[0]), np.asarray(result[1]), dataset, OPTION)
