"""Splitting a dataset's examples among clients: IID, Dirichlet label skew, shards, natural.

Every scheme first assigns each example an owning client, then groups, so memory stays O(examples).
"""

from typing import Literal, get_args

import numpy as np

Scheme = Literal["iid", "dirichlet", "shards", "natural"]
SCHEMES: tuple[str, ...] = get_args(Scheme)
MAX_DIRICHLET_DRAWS = 100


def partition(
    labels: np.ndarray,
    num_clients: int,
    scheme: Scheme,
    *,
    seed: int,
    alpha: float = 0.5,
    shards_per_client: int = 2,
    min_size: int = 1,
    natural: list[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Per-client sorted int64 example numbers; each example goes to at most one client.

    `alpha` and `min_size` apply to "dirichlet", `shards_per_client` to "shards", and
    `natural` (a dataset's natural_clients) to "natural". Deterministic in `seed`.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; known schemes: {', '.join(SCHEMES)}")
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if scheme == "natural":
        return _natural(natural, num_clients, len(labels))
    if num_clients > len(labels):
        raise ValueError(
            f"num_clients ({num_clients}) exceeds the number of examples ({len(labels)})"
        )
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        owner = _deal(rng.permutation(len(labels)), num_clients)
    elif scheme == "dirichlet":
        owner = _dirichlet(labels, num_clients, alpha, min_size, rng)
    else:
        owner = _shards(labels, num_clients, shards_per_client, rng)
    return _group(owner, num_clients)


def holdout_split(
    parts: list[np.ndarray], fraction: float, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Carve a random `fraction` of each client's examples off for federated evaluation.

    Returns (train parts, held-out parts), each sorted; a client with >= 2 examples keeps >= 1.
    """
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    train, held = [], []
    for part in parts:
        shuffled = rng.permutation(np.asarray(part, dtype=np.int64))
        count = min(int(fraction * len(shuffled) + 0.5), max(len(shuffled) - 1, 0))
        held.append(np.sort(shuffled[:count]))
        train.append(np.sort(shuffled[count:]))
    return train, held


def _deal(order: np.ndarray, num_clients: int) -> np.ndarray:
    """Owner per example: `order` cut into num_clients consecutive runs, sizes differing by <= 1."""
    owner = np.empty(len(order), dtype=np.int64)
    owner[order] = np.arange(len(order), dtype=np.int64) * num_clients // len(order)
    return owner


def _dirichlet(
    labels: np.ndarray, num_clients: int, alpha: float, min_size: int, rng: np.random.Generator
) -> np.ndarray:
    """Per class, client shares ~ Dir(alpha); redrawn until each client has >= min_size examples."""
    if not alpha > 0 or not np.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha}")
    if min_size < 0 or min_size * num_clients > len(labels):
        raise ValueError(
            f"min_size={min_size} is impossible: need 0 <= min_size and "
            f"min_size * num_clients ({num_clients}) <= {len(labels)} examples"
        )
    _, classes = np.unique(labels, return_inverse=True)
    by_class = np.split(np.argsort(classes, kind="stable"), np.cumsum(np.bincount(classes))[:-1])
    owner = np.empty(len(labels), dtype=np.int64)
    clients = np.arange(num_clients)
    for _ in range(MAX_DIRICHLET_DRAWS):
        for members in by_class:
            cuts = np.floor(np.cumsum(rng.dirichlet(np.full(num_clients, alpha))) * len(members))
            cuts[-1] = len(members)
            owner[rng.permutation(members)] = np.repeat(
                clients, np.diff(cuts, prepend=0).astype(int)
            )
        if np.bincount(owner, minlength=num_clients).min() >= min_size:
            return owner
    raise ValueError(
        f"dirichlet partition: {MAX_DIRICHLET_DRAWS} draws with alpha={alpha} never gave all "
        f"num_clients={num_clients} clients min_size={min_size} examples; "
        "raise alpha or lower num_clients or min_size"
    )


def _shards(
    labels: np.ndarray, num_clients: int, shards_per_client: int, rng: np.random.Generator
) -> np.ndarray:
    """McMahan et al.: sort by label, cut into equal shards, deal shards_per_client to each."""
    if shards_per_client < 1:
        raise ValueError(f"shards_per_client must be >= 1, got {shards_per_client}")
    num_shards = num_clients * shards_per_client
    if num_shards > len(labels):
        raise ValueError(
            f"num_clients * shards_per_client ({num_clients} * {shards_per_client}) "
            f"exceeds the number of examples ({len(labels)})"
        )
    shuffled = rng.permutation(len(labels))
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    shard_of_example = _deal(by_label, num_shards)
    shard_owner = _deal(rng.permutation(num_shards), num_clients)
    return shard_owner[shard_of_example]


def _natural(
    natural: list[np.ndarray] | None, num_clients: int, num_examples: int
) -> list[np.ndarray]:
    """The first num_clients natural clients, checked to be disjoint and in range."""
    if natural is None:
        raise ValueError("scheme 'natural' needs natural= (the dataset's natural_clients)")
    if num_clients > len(natural):
        raise ValueError(
            f"num_clients ({num_clients}) exceeds the number of natural clients ({len(natural)})"
        )
    parts = [np.sort(np.asarray(part, dtype=np.int64)) for part in natural[:num_clients]]
    used = np.concatenate(parts)
    if used.size and (used.min() < 0 or used.max() >= num_examples):
        raise ValueError(f"natural: example numbers must lie in [0, {num_examples})")
    if used.size and np.bincount(used, minlength=num_examples).max() > 1:
        raise ValueError("natural: clients share examples; each example may belong to one client")
    return parts


def _group(owner: np.ndarray, num_clients: int) -> list[np.ndarray]:
    """Sorted example numbers of each client, from the owner of each example."""
    order = np.argsort(owner, kind="stable").astype(np.int64, copy=False)
    return np.split(order, np.cumsum(np.bincount(owner, minlength=num_clients))[:-1])
