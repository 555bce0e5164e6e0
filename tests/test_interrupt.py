"""Ctrl-C of `fedcore sim` is one line and exit 130, and the run directory keeps what the run
did: its metrics, the summary and the plot."""

import json
import os
import signal
import subprocess
import sys

from tests.conftest import FAST


def test_ctrl_c_writes_the_partial_summary_and_plot_and_exits_130(tmp_path):
    run = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "fedcore.cli",
        "sim",
        *FAST,
        "rounds=500",
        "output.progress=plain",
        f"hydra.run.dir={run}",
    ]
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # A shell starts background jobs with SIGINT ignored, and a Python started so never
        # raises KeyboardInterrupt: give the run the default a terminal's foreground job has.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if "version 2/500" in line:
                break
        assert process.poll() is None, "the run ended before version 2 was shown"
        os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
        _, errors = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, errors
    assert "Traceback" not in errors and errors.count("\n") == 1, errors
    assert errors.startswith("fedcore: interrupted at model version ")
    assert errors.endswith(f" of 500; what it did is in {run}\n")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stop_reason"].startswith("interrupted") and 2 <= summary["versions"] < 500
    rows = (run / "metrics.jsonl").read_text().splitlines()
    assert json.loads(rows[-1])["version"] == summary["versions"]
    assert (run / "metrics.png").exists() and (run / "model.fct").exists()
