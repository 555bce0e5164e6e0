"""Tests for fedcore.models: output shapes per dataset kind, seeded determinism, mismatch errors."""

import pytest
import torch

from fedcore.data import DatasetInfo
from fedcore.models import MODELS, build_model, default_model

IMAGE = DatasetInfo("img", "image", (1, 28, 28), 10)
TEXT = DatasetInfo("txt", "text", (80,), 81, vocab_size=81)
TABULAR = DatasetInfo("tab", "tabular", (32,), 2)
FITS = {
    "mlp": [IMAGE, TABULAR],
    "logreg": [IMAGE, TABULAR],
    "tabular_mlp": [TABULAR],
    "lenet5": [IMAGE],
    "char_gru": [TEXT],
    "char_lstm": [TEXT],
}
SMALL = {"char_gru": {"hidden": 16}, "char_lstm": {"hidden": 16, "layers": 1}}


def example_batch(info: DatasetInfo, batch: int = 3) -> torch.Tensor:
    if info.kind == "text":
        return torch.randint(0, info.vocab_size, (batch, *info.input_shape))
    return torch.randn(batch, *info.input_shape)


def test_every_model_is_covered():
    assert set(FITS) == set(MODELS)


@pytest.mark.parametrize(("name", "info"), [(n, i) for n, infos in FITS.items() for i in infos])
def test_forward_shape(name, info):
    model = build_model(name, info, **SMALL.get(name, {}))
    logits = model(example_batch(info))
    assert logits.shape == (3, info.num_classes)
    assert logits.dtype == torch.float32


@pytest.mark.parametrize("name", MODELS)
def test_same_seed_same_weights_and_outputs(name):
    info = FITS[name][0]
    torch.manual_seed(11)
    first = build_model(name, info, **SMALL.get(name, {}))
    torch.manual_seed(11)
    second = build_model(name, info, **SMALL.get(name, {}))
    torch.manual_seed(12)
    third = build_model(name, info, **SMALL.get(name, {}))
    batch = example_batch(info)
    assert torch.equal(first(batch), second(batch))
    assert not torch.equal(first(batch), third(batch))


@pytest.mark.parametrize("name", MODELS)
def test_no_batch_norm(name):
    model = build_model(name, FITS[name][0], **SMALL.get(name, {}))
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def linear_shapes(model: torch.nn.Module) -> list[tuple[int, int]]:
    return [
        (m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)
    ]


def test_options_change_architecture():
    assert linear_shapes(build_model("mlp", IMAGE)) == [(784, 200), (200, 10)]
    assert linear_shapes(build_model("mlp", IMAGE, hidden=[64, 32])) == [
        (784, 64),
        (64, 32),
        (32, 10),
    ]
    assert linear_shapes(build_model("tabular_mlp", TABULAR)) == [(32, 32), (32, 2)]
    assert linear_shapes(build_model("logreg", IMAGE)) == [(784, 10)]
    assert linear_shapes(build_model("lenet5", IMAGE)) == [(400, 120), (120, 84), (84, 10)]
    lstm = build_model("char_lstm", TEXT, hidden=24, layers=3).rnn
    assert (lstm.hidden_size, lstm.num_layers) == (24, 3)


@pytest.mark.parametrize(
    ("name", "info"),
    [("lenet5", TEXT), ("lenet5", TABULAR), ("char_gru", IMAGE), ("tabular_mlp", IMAGE)],
)
def test_model_that_does_not_fit_names_both(name, info):
    with pytest.raises(ValueError, match=rf"{name}.*{info.name}"):
        build_model(name, info)


def test_lenet5_needs_large_enough_images():
    with pytest.raises(ValueError, match=r"lenet5.*tiny"):
        build_model("lenet5", DatasetInfo("tiny", "image", (1, 8, 8), 10))


def test_unknown_model_lists_known_ones():
    with pytest.raises(ValueError, match=r"resnet.*known models: mlp"):
        build_model("resnet", IMAGE)


@pytest.mark.parametrize(
    ("info", "expected"), [(IMAGE, "mlp"), (TEXT, "char_gru"), (TABULAR, "tabular_mlp")]
)
def test_default_model_fits_its_dataset(info, expected):
    assert default_model(info) == expected
    assert build_model(expected, info)(example_batch(info)).shape == (3, info.num_classes)
