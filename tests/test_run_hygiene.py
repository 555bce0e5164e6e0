"""Run directories are the owner's alone and always hold valid JSON; client options refuse
numbers that are not numbers."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from fedcore.clients.main import client_main
from fedcore.server.rundir import RunDirectory


def test_the_run_directory_is_private_and_metrics_stay_valid_json(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "run", {"seed": 0})
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o700
    run.append({"version": 1, "test_loss": float("nan"), "fed_loss": float("inf"), "acc": 0.5})
    line = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0]
    row = json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in metrics.jsonl"))
    assert row["test_loss"] is None and row["fed_loss"] is None and row["acc"] == 0.5


@pytest.mark.parametrize("slow", ["nan", "inf", "-1", "fast"])
def test_a_client_refuses_a_slow_option_that_is_not_a_duration(slow, capsys) -> None:
    arguments = ["--server", "h:1", "--id", "c", "--certs", "x", "--config", "y", "--slow", slow]
    with pytest.raises(SystemExit) as exit_:
        client_main(arguments)
    assert exit_.value.code == 2
    assert "must be a finite number of seconds >= 0" in capsys.readouterr().err
