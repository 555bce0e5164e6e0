"""Fashion-MNIST (60k/10k) from the Debian package dataset-fashion-mnist (gzipped IDX files)."""

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from fedcore.data.cache import cached_array
from fedcore.data.federated import FederatedDataset
from fedcore.data.images import ImagesAndLabels, image_dataset
from fedcore.data.packages import DebianPackage

PACKAGE = DebianPackage("dataset-fashion-mnist", Path("/usr/share/datasets/fashion-mnist"))
MEAN, STD = 0.2860, 0.3530
UNSIGNED_BYTE = 0x08


def load_fmnist() -> FederatedDataset:
    """Fashion-MNIST train/test as normalised float32 [n, 1, 28, 28] images."""
    return image_dataset("fmnist", _read("train"), _read("t10k"), MEAN, STD)


def read_idx(path: Path) -> np.ndarray:
    """Decode a gzipped IDX file (2 zero bytes, dtype code, ndim, big-endian uint32 dims, data).

    Raises ValueError naming the file when it is not gzip, has a bad header, or the wrong length.
    """
    try:
        data = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"corrupt IDX file {path}: not valid gzip ({error})") from error
    if len(data) < 4:
        raise ValueError(f"corrupt IDX file {path}: {len(data)} bytes is too short for a header")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != UNSIGNED_BYTE or ndim == 0:
        raise ValueError(
            f"corrupt IDX file {path}: bad magic (zero={zero}, dtype=0x{dtype_code:02x}, "
            f"ndim={ndim}); expected 0, 0x{UNSIGNED_BYTE:02x}, ndim >= 1"
        )
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise ValueError(f"corrupt IDX file {path}: header is cut short")
    shape = struct.unpack(f">{ndim}I", data[4:offset])
    if len(data) - offset != math.prod(shape):
        raise ValueError(
            f"corrupt IDX file {path}: dims {shape} need {math.prod(shape)} bytes, "
            f"found {len(data) - offset}"
        )
    return np.frombuffer(data, np.uint8, offset=offset).reshape(shape)


def _read(split: str) -> ImagesAndLabels:
    images = cached_array(PACKAGE.path(f"{split}-images-idx3-ubyte.gz"), "idx", read_idx)
    labels = cached_array(PACKAGE.path(f"{split}-labels-idx1-ubyte.gz"), "idx", read_idx)
    if images.ndim != 3 or labels.ndim != 1:
        raise ValueError(
            f"fmnist {split}: expected 3-D images and 1-D labels, "
            f"got {images.shape} and {labels.shape}"
        )
    return images, labels
