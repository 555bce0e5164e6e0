"""The benchmarks still run: each in --quick mode, its JSON holding the keys reports rely on."""

import json
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

from benchmarks.run_all import BENCHMARKS

ROOT = Path(__file__).resolve().parent.parent

EXPECTED_KEYS = {
    "aggregation": {"cpu", "cuda", "target_ratio", "repeats"},
    "simulation_overhead": {"best", "runs", "targets", "model_params", "overrides"},
    "presets": {"cases", "target_ratio"},
    "dp_sgd": {"seconds_per_step", "ratio_to_plain", "target_ratio"},
    "memory": {
        "cases",
        "per_client_bytes",
        "peak_target_bytes",
        "baseline_clients",
        "rss_import_torch_only_bytes",
    },
}


def _quick(name: str, out: Path) -> subprocess.CompletedProcess[str]:
    """`python -m benchmarks.NAME --quick --out OUT`, which must succeed."""
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_benchmark_runs_quick_and_writes_its_json(name, tmp_path):
    _quick(name, tmp_path)
    result = json.loads((tmp_path / f"{name}.json").read_text())
    assert {"benchmark", "quick", "environment", "passed"} | EXPECTED_KEYS[name] <= set(result)
    assert result["benchmark"] == name and result["quick"] is True
    assert BENCHMARKS[name](result), "the run_all summary has no rows for this result"
    if name == "aggregation":
        hogged = result["cpu_beside_hog"]
        assert hogged["busy_processes"] >= 1 and len(hogged["cases"]) == len(result["cpu"])
        for row in result["cpu"] + hogged["cases"]:
            assert set(row["gbps"]) == {"copy", "streaming", "batch", "receive"}
            assert row["max_abs_difference"] < 1e-4
    elif name == "presets":
        (heart,) = result["cases"].values()
        assert heart["same_model"] and heart["busy_processes"] >= 1
        assert heart["one_thread_quiet"]["runs"][0]["workers"] == 0
    elif name == "dp_sgd":
        assert set(result["ratio_to_plain"]) == {"plain", "ghost", "hooks"}
        assert result["ratio_to_plain"]["hooks"] > result["ratio_to_plain"]["plain"] == 1.0
    elif name == "simulation_overhead":
        assert 90_000 <= result["model_params"] <= 110_000
        assert result["best"]["round_mean_s"] > result["best"]["training_mean_s"] > 0
    else:
        assert [case["num_clients"] for case in result["cases"]] == [100, 1000]
        assert all(case["peak_rss_bytes"] > 0 for case in result["cases"])


def test_asynchrony_benchmark_runs_quick_and_writes_its_json_and_plot(tmp_path):
    _quick("asynchrony", tmp_path)
    result = json.loads((tmp_path / "asynchrony.json").read_text())
    assert result["benchmark"] == "asynchrony" and result["quick"] is True
    assert set(result["summary"]) == {"fedavg", "fedasync", "fedbuff", "fedcompass"}
    assert set(result["claim"]) == {
        "faster_than_asynchronous",
        "more_accurate_than_asynchronous",
        "faster_than_synchronous",
    }
    assert all(run["curve"][0][0] == 0.0 and run["local_steps"] > 0 for run in result["runs"])
    assert (tmp_path / "asynchrony.png").read_bytes()[:4] == b"\x89PNG"


def test_research_benchmark_runs_quick_and_writes_its_table_json_and_plot(tmp_path):
    done = _quick("research", tmp_path)
    assert "Issue-4 reproduction" in done.stdout
    result = json.loads((tmp_path / "research.json").read_text())
    assert result["benchmark"] == "research" and result["quick"] is True and result["passed"]
    methods = {"fedavg", "fedprox", "fedld", "fedlaw", "fedamd", "fedamd+init"}
    for setting in result["summary"].values():
        assert set(setting) == methods
        assert setting["fedavg"]["passes_per_client_round"] == 10.0
        assert setting["fedamd"]["passes_per_client_round"] > 10.0, "anchors and 2-pass steps"
        assert all(0 <= m["final_mean"] <= 1 for m in setting.values())
    assert (tmp_path / "research.png").read_bytes()[:4] == b"\x89PNG"


def test_transport_benchmark_runs_quick_and_writes_its_json(tmp_path):
    _quick("transport", tmp_path)
    result = json.loads((tmp_path / "transport.json").read_text())
    assert result["benchmark"] == "transport" and result["quick"] is True
    for trip in [*result["round_trips"], result["round_trip_with_checkpoints"]]:
        assert trip["round_latency_median_s"] > 0 and trip["throughput_mb_s"] > 0
        assert trip["server_peak_rss_bytes"] > trip["model_bytes"]
        assert trip["client_peak_rss_bytes"] > trip["model_bytes"]
        assert 0 < trip["client_rss_before_model_bytes"] < trip["client_peak_rss_bytes"]
    cases = result["concurrent_uploads"]
    assert [(c["spool_bytes"] > 0, c["uploaders"]) for c in cases] == [
        (True, 1),
        (True, 4),
        (False, 4),
    ]
    assert all(c["server_peak_rss_bytes"] >= c["server_idle_rss_bytes"] > 0 for c in cases)
    assert set(result["streaming"]) == {
        "spooled_4_vs_1_growth_over_model",
        "spooled_4_peak_over_model",
    }


def test_fingerprints_compare_a_run_with_an_earlier_one(tmp_path):
    _quick("fingerprints", tmp_path)
    first = json.loads((tmp_path / "fingerprints.json").read_text())
    assert set(first["sha256"]) == {"fedavg", "fedcompass"}
    again = tmp_path / "again"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks.fingerprints", "--quick"),
            *("--out", str(again), "--against", str(tmp_path / "fingerprints.json")),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert "all compared cases identical: PASS" in done.stdout, done.stdout
    assert json.loads((again / "fingerprints.json").read_text())["sha256"] == first["sha256"]


def test_poisoning_reports_every_attack_with_and_without_the_defaults(tmp_path):
    _quick("poisoning", tmp_path)
    result = json.loads((tmp_path / "poisoning.json").read_text())
    assert set(result["attacks"]) == {"flip10", "count", "huge"}
    assert all(
        0 <= r["defended"] <= 1 and 0 <= r["undefended"] <= 1 for r in result["attacks"].values()
    )


def test_preset_accuracy_benchmark_runs_quick_and_writes_its_json(tmp_path):
    _quick("preset_accuracy", tmp_path)
    result = json.loads((tmp_path / "preset_accuracy.json").read_text())
    assert result["benchmark"] == "preset_accuracy" and result["quick"] is True
    assert set(result["cases"]) == {"fedavg", "experiment=heart"}
    for case in result["cases"].values():
        assert case["versions"] == 3 and 0 < case["final_accuracy"] <= case["best_accuracy"] <= 1


@pytest.mark.skipif(find_spec("opacus") is None, reason="DP-SGD's calibration needs opacus")
def test_privacy_utility_benchmark_runs_quick_and_writes_its_json_and_plot(tmp_path):
    _quick("privacy_utility", tmp_path)
    result = json.loads((tmp_path / "privacy_utility.json").read_text())
    assert result["benchmark"] == "privacy_utility" and result["quick"] is True
    assert set(result["cases"]) == {
        *("none eps=inf", "local eps=8", "local eps=inf", "dpsgd eps=8", "dpsgd eps=inf")
    }
    for name, case in result["cases"].items():
        (run,) = case["runs"]
        assert 0 < case["accuracy_mean"] <= 1 and run["versions"] == result["rounds"]
        if name.endswith("eps=8"):
            assert 0 < run["epsilon_max"] <= 8 and run["noise_multiplier"] > 0
        else:
            assert run["epsilon_max"] is None and run["noise_multiplier"] == 0
    assert (tmp_path / "privacy_utility.png").read_bytes()[:4] == b"\x89PNG"
