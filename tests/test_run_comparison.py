"""Runs you can compare: sweep directories named by what they vary, summaries that say what a
run was, and `fedcore report` over a sweep (`server/comparison.py`)."""

import json
from pathlib import Path

from fedcore import __version__
from server.comparison import find_runs, group_table, labels, run_table, seed_groups
from tests.conftest import FAST
from tests.processes import run_fedcore

SWEEP = ("-m", *FAST, "strategy=fedavg,fedprox,fedadam", "seed=0,1")


def test_report_tabulates_and_plots_a_sweep_of_three_strategies_and_two_seeds(tmp_path):
    swept = run_fedcore("sim", *SWEEP, cwd=tmp_path)
    assert swept.returncode == 0, swept.stderr
    (sweep,) = tmp_path.glob("multirun/*/*")
    names = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert names == [
        f"{n}_strategy={strategy},seed={seed}"
        for n, (strategy, seed) in enumerate(
            (s, seed) for s in ("fedavg", "fedprox", "fedadam") for seed in (0, 1)
        )
    ]
    summary = json.loads((sweep / names[3] / "summary.json").read_text())
    assert summary["strategy"] == "fedprox" and summary["seed"] == 1
    assert summary["dataset"] == "synthetic" and summary["partition"] == "dirichlet"
    assert "strategy=fedprox" in summary["overrides"] and "rounds=3" in summary["overrides"]
    assert summary["versions"] == 3 and summary["libraries"]["fedcore"] == __version__

    report = run_fedcore("report", str(sweep), "--target", "0.3", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    lines = report.stdout.splitlines()
    assert lines[0].split()[:8] == [
        "run",
        "strategy",
        "dataset",
        "seed",
        "versions",
        "final",
        "best",
        "best",
    ]
    rows = [line.split() for line in lines[1:7]]
    assert [row[0] for row in rows] == [name.split("_", 1)[1] for name in names]
    finals = {}
    for name, row in zip(names, rows, strict=True):
        metrics = [json.loads(x) for x in (sweep / name / "metrics.jsonl").read_text().splitlines()]
        assert float(row[5]) == round(metrics[-1]["test_accuracy"], 4)
        assert float(row[6]) == round(max(m["test_accuracy"] for m in metrics), 4)
        finals.setdefault(row[1], []).append(float(row[5]))
    header = next(i for i, line in enumerate(lines) if line.startswith("configuration"))
    groups = [line.split() for line in lines[header + 1 : header + 4]]
    assert [g[:2] for g in groups] == [
        ["strategy=fedavg", "2"],
        ["strategy=fedprox", "2"],
        ["strategy=fedadam", "2"],
    ]
    for group in groups:
        mean = sum(finals[group[0].split("=")[1]]) / 2
        assert abs(float(group[2]) - mean) <= 5e-5, (group, finals)
    plot = sweep / "report.png"
    assert plot.read_bytes().startswith(b"\x89PNG") and f"plot: {plot}" in report.stdout


def _run(path: Path, accuracies: list[float], overrides: list[str]) -> None:
    path.mkdir(parents=True)
    rows = [
        {"version": v, "time": 10.0 * v, "wall": 1.0 * v, "test_accuracy": a}
        for v, a in enumerate(accuracies, start=1)
    ]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"vers')
    summary = {"overrides": overrides, "strategy": "fedavg", "bytes_down": 2e6, "bytes_up": 1e6}
    (path / "summary.json").write_text(json.dumps(summary))


def test_tables_name_runs_by_what_sets_them_apart_and_summarise_seeds(tmp_path):
    _run(tmp_path / "a", [0.5, 0.7, 0.6], ["rounds=3", "seed=0"])
    _run(tmp_path / "b", [0.4, 0.8, 0.9], ["rounds=3", "seed=1"])
    runs = find_runs([tmp_path])
    assert labels(runs, tmp_path) == ["seed=0", "seed=1"]
    table = run_table(runs, tmp_path, "test_accuracy", target=0.7).splitlines()
    assert table[1].split()[5:11] == ["0.6000", "0.7000", "2", "2", "20.0", "3.0"]
    assert table[2].split()[5:11] == ["0.9000", "0.9000", "3", "2", "20.0", "3.0"]
    grouped = group_table(seed_groups(runs), "test_accuracy").splitlines()
    assert grouped[1].split() == [
        "(all",
        "runs)",
        "2",
        "0.7500",
        "±",
        "0.2121",
        "0.8000",
        "±",
        "0.1414",
    ]


def test_report_of_a_directory_without_runs_is_one_line_and_exit_2(tmp_path):
    result = run_fedcore("report", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == f"fedcore report: {tmp_path}: no run below it (no metrics.jsonl)\n"


def test_metrics_go_to_tensorboard_too_when_asked(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fedcore.api import run

    summary = run(*FAST, "output.tensorboard=true", run_dir=tmp_path / "run")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    logged = [(e.step, round(e.value, 6)) for e in events.Scalars("test_accuracy")]
    history = summary["history"]
    assert logged == [(r["version"], round(r["test_accuracy"], 6)) for r in history]
    assert {"train_loss", "bytes_down", "fed_accuracy"} <= set(events.Tags()["scalars"])
