"""Model zoo: small CPU-friendly networks built to fit a dataset's DatasetInfo."""

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Literal

import torch
from torch import nn

from fedcore.data.federated import DatasetInfo, DatasetKind

RecurrentCell = Literal["gru", "lstm"]


class CharRNN(nn.Module):
    """Next-character model (LEAF Shakespeare): embedding, stacked GRU/LSTM, last step -> logits."""

    def __init__(
        self, vocab_size: int, cell: RecurrentCell, embedding: int, hidden: int, layers: int
    ) -> None:
        super().__init__()
        recurrent = {"gru": nn.GRU, "lstm": nn.LSTM}[cell]
        self.embed = nn.Embedding(vocab_size, embedding)
        self.rnn = recurrent(embedding, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits [batch, vocab] for the character after each int64 window [batch, length]."""
        outputs, _ = self.rnn(self.embed(tokens))
        return self.head(outputs[:, -1])


def _mlp(info: DatasetInfo, hidden: Sequence[int] = (200,)) -> nn.Module:
    """Flatten, then Linear+ReLU per hidden width, then a Linear read-out."""
    widths = [math.prod(info.input_shape), *hidden]
    layers: list[nn.Module] = [nn.Flatten()]
    for width_in, width_out in itertools.pairwise(widths):
        layers += [nn.Linear(width_in, width_out), nn.ReLU()]
    layers.append(nn.Linear(widths[-1], info.num_classes))
    return nn.Sequential(*layers)


def _logreg(info: DatasetInfo) -> nn.Module:
    """Multinomial logistic regression: one Linear layer on the flattened input."""
    return _mlp(info, hidden=())


def _lenet5(info: DatasetInfo) -> nn.Module:
    """LeNet-5 style CNN: conv5x6 (padded), pool, conv5x16, pool, fc120, fc84, out; ReLU."""
    if len(info.input_shape) != 3 or min(info.input_shape[1:]) < 12:
        raise ValueError(
            f"model 'lenet5' needs [channels, height, width] inputs of at least 12x12; "
            f"dataset {info.name!r} has input_shape {info.input_shape}"
        )
    channels, height, width = info.input_shape
    flat = 16 * ((height // 2 - 4) // 2) * ((width // 2 - 4) // 2)
    return nn.Sequential(
        nn.Conv2d(channels, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(flat, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, info.num_classes),
    )


def _char_rnn(
    info: DatasetInfo, cell: RecurrentCell, embedding: int = 8, hidden: int = 128, layers: int = 2
) -> nn.Module:
    """CharRNN over the dataset's vocabulary (LEAF used LSTM 2x256; 128 keeps CPU runs quick)."""
    return CharRNN(info.vocab_size, cell, embedding, hidden, layers)


_IMAGE_OR_TABULAR: frozenset[DatasetKind] = frozenset({"image", "tabular"})
_MODELS: dict[str, tuple[frozenset[DatasetKind], Callable[..., nn.Module]]] = {
    "mlp": (_IMAGE_OR_TABULAR, _mlp),
    "logreg": (_IMAGE_OR_TABULAR, _logreg),
    "tabular_mlp": (frozenset({"tabular"}), partial(_mlp, hidden=(32,))),
    "lenet5": (frozenset({"image"}), _lenet5),
    "char_gru": (frozenset({"text"}), partial(_char_rnn, cell="gru")),
    "char_lstm": (frozenset({"text"}), partial(_char_rnn, cell="lstm")),
}
#: The models fedcore ships (plug-ins may register more: `register_model`).
MODELS = tuple(_MODELS)
_DEFAULTS: dict[DatasetKind, str] = {"image": "mlp", "text": "char_gru", "tabular": "tabular_mlp"}


def register_model(
    name: str,
    builder: Callable[..., nn.Module],
    kinds: Iterable[DatasetKind] = ("image", "tabular", "text"),
) -> None:
    """Make `model.name=NAME` build `builder(info, **model.options)` for datasets of `kinds`
    (a plug-in's model, docs/extending.md); weights come from torch's global RNG, seeded."""
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = (frozenset(kinds), builder)


def build_model(name: str, info: DatasetInfo, **options: object) -> nn.Module:
    """Build model `name` for the dataset `info`; weights come from torch's global RNG.

    Raises ValueError for an unknown name or a model that does not fit the dataset's kind.
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(_MODELS)}")
    kinds, builder = _MODELS[name]
    if info.kind not in kinds:
        raise ValueError(
            f"model {name!r} does not fit dataset {info.name!r} of kind {info.kind!r}; "
            f"it needs a {' or '.join(sorted(kinds))} dataset"
        )
    return builder(info, **options)


def default_model(info: DatasetInfo) -> str:
    """A sensible model per dataset kind; images get the MLP (LeNet-5 trains ~9x slower on CPU)."""
    return _DEFAULTS[info.kind]
