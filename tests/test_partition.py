"""Tests for fedcore.data.partition: label skew, determinism, coverage, errors and scale."""

import time

import numpy as np
import pytest

from fedcore.data import holdout_split, partition

NUM_CLASSES = 10


def balanced_labels(per_class: int, seed: int = 0) -> np.ndarray:
    """Shuffled labels with exactly `per_class` examples of each of NUM_CLASSES classes."""
    rng = np.random.default_rng(seed)
    return rng.permutation(np.repeat(np.arange(NUM_CLASSES), per_class))


def class_shares(labels: np.ndarray, parts: list[np.ndarray]) -> np.ndarray:
    """Row per client: the fraction of its examples in each class."""
    counts = np.stack([np.bincount(labels[p], minlength=NUM_CLASSES) for p in parts])
    return counts / counts.sum(axis=1, keepdims=True)


def assert_disjoint_in_range(parts: list[np.ndarray], num_examples: int) -> None:
    for part in parts:
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0), "each part must be sorted without repeats"
    used = np.concatenate(parts)
    assert len(np.unique(used)) == len(used)
    assert used.min() >= 0 and used.max() < num_examples


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_every_example_used_once(scheme):
    labels = balanced_labels(200)
    parts = partition(labels, 20, scheme, seed=3)
    assert len(parts) == 20
    assert_disjoint_in_range(parts, len(labels))
    assert sum(len(p) for p in parts) == len(labels)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_same_seed_same_partition_other_seed_differs(scheme):
    labels = balanced_labels(100)
    first = partition(labels, 10, scheme, seed=7)
    again = partition(labels, 10, scheme, seed=7)
    other = partition(labels, 10, scheme, seed=8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_dirichlet_large_alpha_matches_global_label_mix():
    labels = balanced_labels(1000)
    shares = class_shares(labels, partition(labels, 10, "dirichlet", seed=0, alpha=1000.0))
    assert np.abs(shares - 1 / NUM_CLASSES).max() < 0.05


def test_dirichlet_small_alpha_is_dominated_by_few_classes():
    labels = balanced_labels(1000)
    skewed = class_shares(labels, partition(labels, 50, "dirichlet", seed=0, alpha=0.05))
    mild = class_shares(labels, partition(labels, 50, "dirichlet", seed=0, alpha=1000.0))
    assert skewed.max(axis=1).mean() > 0.7
    assert mild.max(axis=1).mean() < 0.2


def test_dirichlet_respects_min_size():
    labels = balanced_labels(100)
    parts = partition(labels, 20, "dirichlet", seed=1, alpha=0.3, min_size=10)
    assert min(len(p) for p in parts) >= 10


def test_iid_sizes_balanced_and_label_mix_global():
    labels = balanced_labels(1003)
    parts = partition(labels, 7, "iid", seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert np.abs(class_shares(labels, parts) - 0.1).max() < 0.03


def test_shards_give_each_client_at_most_shards_per_client_labels():
    labels = balanced_labels(100)
    parts = partition(labels, 50, "shards", seed=0, shards_per_client=2)
    assert all(len(p) == 20 for p in parts)
    assert max(len(np.unique(labels[p])) for p in parts) <= 2
    assert np.mean([len(np.unique(labels[p])) for p in parts]) > 1.5


def test_natural_uses_given_clients_in_order():
    natural = [np.array([5, 1]), np.array([0, 2, 3]), np.array([4])]
    labels = np.zeros(6, dtype=np.int64)
    parts = partition(labels, 2, "natural", seed=0, natural=natural)
    assert [p.tolist() for p in parts] == [[1, 5], [0, 2, 3]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_clients": 0, "scheme": "iid"}, "num_clients"),
        ({"num_clients": 101, "scheme": "iid"}, r"num_clients \(101\).*\(100\)"),
        ({"num_clients": 5, "scheme": "dirichlet", "alpha": 0.0}, "alpha"),
        ({"num_clients": 5, "scheme": "dirichlet", "alpha": -1.0}, "alpha"),
        ({"num_clients": 5, "scheme": "dirichlet", "min_size": 30}, "min_size"),
        ({"num_clients": 5, "scheme": "shards", "shards_per_client": 0}, "shards_per_client"),
        ({"num_clients": 60, "scheme": "shards", "shards_per_client": 2}, "shards_per_client"),
        ({"num_clients": 2, "scheme": "natural"}, "natural"),
        ({"num_clients": 4, "scheme": "natural", "natural": [[0], [1], [2]]}, r"\(4\).*\(3\)"),
        ({"num_clients": 2, "scheme": "natural", "natural": [[0, 1], [1]]}, "share"),
        ({"num_clients": 1, "scheme": "natural", "natural": [[100]]}, r"\[0, 100\)"),
        ({"num_clients": 2, "scheme": "random"}, "known schemes: iid, dirichlet, shards"),
    ],
)
def test_bad_parameters_are_named(kwargs, message):
    labels = np.arange(100) % NUM_CLASSES
    with pytest.raises(ValueError, match=message):
        partition(labels, seed=0, **kwargs)


def test_dirichlet_gives_up_with_a_clear_error():
    labels = np.arange(100) % NUM_CLASSES
    with pytest.raises(ValueError, match=r"alpha=0.01.*num_clients=20.*min_size=5"):
        partition(labels, 20, "dirichlet", seed=0, alpha=0.01, min_size=5)


def test_labels_must_be_integers():
    with pytest.raises(ValueError, match="labels"):
        partition(np.linspace(0, 1, 10), 2, "iid", seed=0)


@pytest.mark.parametrize(
    ("scheme", "options"),
    [("iid", {}), ("shards", {}), ("dirichlet", {"alpha": 0.5, "min_size": 0})],
)
def test_ten_thousand_clients_over_sixty_thousand_examples_is_fast(scheme, options):
    labels = balanced_labels(6000)
    start = time.perf_counter()
    parts = partition(labels, 10_000, scheme, seed=0, **options)
    elapsed = time.perf_counter() - start
    assert len(parts) == 10_000
    assert sum(len(p) for p in parts) == 60_000
    assert elapsed < 1.0, f"{scheme} took {elapsed:.2f}s"


def test_holdout_split_carves_fraction_and_keeps_one_for_training():
    parts = [np.arange(0, 10), np.arange(10, 12), np.array([12]), np.array([], dtype=np.int64)]
    train, held = holdout_split(parts, 0.3, seed=0)
    assert [len(t) for t in train] == [7, 1, 1, 0]
    assert [len(h) for h in held] == [3, 1, 0, 0]
    for part, kept, out in zip(parts, train, held, strict=True):
        assert np.array_equal(np.sort(np.concatenate([kept, out])), part)
    assert len(holdout_split([np.arange(5)], 1.0, seed=0)[0][0]) == 1


def test_holdout_split_deterministic_and_validated():
    parts = [np.arange(100)]
    assert np.array_equal(holdout_split(parts, 0.3, 4)[1][0], holdout_split(parts, 0.3, 4)[1][0])
    assert not np.array_equal(
        holdout_split(parts, 0.3, 4)[1][0], holdout_split(parts, 0.3, 5)[1][0]
    )
    with pytest.raises(ValueError, match="fraction"):
        holdout_split(parts, 1.5, 0)
