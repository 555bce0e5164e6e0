"""The divergence guard stops a run whose loss explodes or goes non-finite
(`server/divergence.py`), with one line naming the cause and the setting to change."""

import json
import math

import pytest

from fedcore.server.divergence import DIVERGED, DivergenceGuard
from fedcore.server.experiment import parse_experiment
from tests.conftest import FAST, composed
from tests.processes import run_fedcore


def _guard(*overrides: str) -> tuple[DivergenceGuard, list[str]]:
    config, _ = parse_experiment(composed(*FAST, *overrides))
    reasons: list[str] = []
    return DivergenceGuard(config, 2.0, reasons.append), reasons


@pytest.mark.parametrize("loss", [None, 0.5, 2.0, 20.0])
def test_losses_up_to_the_factor_pass(loss):
    guard, reasons = _guard()
    guard.check(1, "the test loss", loss)
    assert reasons == [] and not guard.tripped


@pytest.mark.parametrize(
    ("loss", "shown"),
    [(20.5, "20.5, more than 10x the initial model's test loss (2)"), (math.inf, "not finite")],
)
def test_a_loss_past_the_factor_or_not_finite_stops_once(loss, shown):
    guard, reasons = _guard("training.lr=0.5")
    guard.check(4, "the test loss", loss)
    guard.check(5, "the test loss", math.nan)
    assert reasons == [
        f"{DIVERGED} at model version 4: the test loss is {shown}; a learning rate too high is "
        "the usual cause: lower training.lr (now 0.5) (divergence.loss_factor=0 turns this "
        "check off)"
    ]


def test_the_advice_names_a_server_learning_rate_that_was_changed():
    guard, reasons = _guard("strategy=fedadam", "strategy.server_step.lr=3")
    guard.check(1, "the test loss", math.nan)
    assert "lower training.lr (now 0.02) or strategy.server_step.lr (now 3)" in reasons[0]


def test_a_diverging_run_stops_within_three_versions_with_one_line(tmp_path):
    run = tmp_path / "run"
    result = run_fedcore(
        "sim", *FAST, "rounds=10", "training.lr=100", f"hydra.run.dir={run}", cwd=tmp_path
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"fedcore: {DIVERGED} at model version ")
    assert result.stderr.count("\n") == 1 and "lower training.lr (now 100)" in result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stop_reason"].startswith(DIVERGED) and summary["versions"] <= 3
    assert (run / "metrics.png").exists()


def test_the_guard_can_be_turned_off(tmp_path):
    config = composed(*FAST, "training.lr=100", "divergence.loss_factor=0")
    from fedcore.server.simulation import simulate

    summary = simulate(config, None)
    assert summary["stop_reason"] == "reached 3 model versions"


def test_a_sweep_goes_on_past_a_diverged_job_and_exits_1(tmp_path):
    result = run_fedcore("sim", "-m", *FAST, "training.lr=100,0.05", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    summaries = sorted(tmp_path.glob("multirun/*/*/*/summary.json"))
    reasons = [json.loads(path.read_text())["stop_reason"] for path in summaries]
    assert len(reasons) == 2 and reasons[0].startswith(DIVERGED), reasons
    assert reasons[1] == "reached 3 model versions"
    assert result.stderr.count(f"fedcore: {DIVERGED} at model version") == 1
