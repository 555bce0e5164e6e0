"""`fedcore client --data`: the user's own data through an .npz file or a module:function hook."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedcore.clients.local_data import load_local_data
from fedcore.data import load_dataset
from fedcore.server.ledger import read_ledger
from fedcore.typed_config import ConfigError
from tests.processes import (
    TWO_CLIENTS,
    client,
    finish_federation,
    make_certs,
    server_port,
    start_server,
)
from tests.user_data_hook import points

DATASET = load_dataset("synthetic")


def test_npz_and_hook_give_checked_splits(tmp_path: Path) -> None:
    x = np.ones((5, 20), dtype=np.float64)
    np.savez(tmp_path / "mine.npz", x=x, y=np.array([0, 1, 2, 3, 9]))
    split = load_local_data(str(tmp_path / "mine.npz"), DATASET)
    assert len(split) == 5 and split.x.dtype == DATASET.train.x.dtype
    assert split.labels().tolist() == [0, 1, 2, 3, 9]
    hooked = load_local_data("tests.user_data_hook:points", DATASET)
    assert len(hooked) == 60 and tuple(hooked.x.shape[1:]) == (20,)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (
            {"x": np.ones((5, 21)), "y": np.zeros(5, dtype=int)},
            r"want x of shape \[n >= 1, \*\(20,\)\]",
        ),
        ({"x": np.ones((5, 20)), "y": np.full(5, 10)}, r"labels in \[0, 10\)"),
        ({"x": np.ones((5, 20))}, "cannot read arrays x and y"),
    ],
)
def test_bad_user_data_is_refused_naming_the_option(tmp_path: Path, arrays, message) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ConfigError, match=f"--data: .*{message}"):
        load_local_data(str(tmp_path / "bad.npz"), DATASET)


def test_bad_hooks_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"neither an \.npz file nor module:function"):
        load_local_data("no-such-thing", DATASET)
    with pytest.raises(ConfigError, match=r"cannot load tests\.user_data_hook:missing"):
        load_local_data("tests.user_data_hook:missing", DATASET)


@pytest.mark.slow
def test_a_client_trains_on_its_own_data_in_a_deployment(tmp_path: Path) -> None:
    make_certs(tmp_path, 2)
    x, y = points(DATASET.info)
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    server = start_server(
        tmp_path,
        *TWO_CLIENTS,
        "rounds=2",
    )
    port = server_port(server)
    clients = [
        client(tmp_path, port, 0),
        client(tmp_path, port, 1, "--data", str(tmp_path / "mine.npz")),
    ]
    finish_federation(server, clients)
    accepted = [
        e for e in read_ledger(tmp_path / "run" / "ledger.jsonl") if e["event"] == "accepted"
    ]
    # 60 own examples: the partition's hold-out share (10%, 6) is kept for evaluation.
    assert [e["examples"] for e in accepted if e["client"] == 1] == [54, 54]
    assert all(e["examples"] != 54 for e in accepted if e["client"] == 0)
    evaluated = [
        e for e in read_ledger(tmp_path / "run" / "ledger.jsonl") if e["event"] == "evaluated"
    ]
    assert {e["examples"] for e in evaluated if e["client"] == 1} == {6}
