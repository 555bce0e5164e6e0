"""On-disk .npy cache of decoded source files, so slow decodes (MNIST's CSV) run once."""

import contextlib
import hashlib
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

CACHE_ENV = "FEDCORE_CACHE"


def cache_dir() -> Path:
    """The cache folder: $FEDCORE_CACHE when set, else ~/.cache/fedcore."""
    override = os.environ.get(CACHE_ENV)
    return Path(override) if override else Path.home() / ".cache" / "fedcore"


def cached_array(source: Path, tag: str, decode: Callable[[Path], np.ndarray]) -> np.ndarray:
    """decode(source), reused from a cache entry keyed by tag and the source's path, size and mtime.

    `tag` names the decoder and its output format; change it when the decode changes.
    """
    stat = source.stat()
    key = f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    target = cache_dir() / f"{tag}-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npy"
    with contextlib.suppress(OSError, ValueError, EOFError):  # absent or unreadable: decode afresh
        return np.load(target, allow_pickle=False)
    array = decode(source)
    try:
        _save_atomically(target, array)
    except OSError as error:
        warnings.warn(f"fedcore: could not write cache {target}: {error}", stacklevel=2)
    return array


def _save_atomically(target: Path, array: np.ndarray) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
    partial = Path(name)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
