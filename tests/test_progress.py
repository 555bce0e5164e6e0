"""The live panel (`server/progress.py`): what it says while a run is busy, and that a library
writing to the process's stderr cannot break it."""

import io
import os
import sys

from rich.console import Console

from fedcore.server.progress import Activity, ProgressDisplay, sparkline


def _row(version: int, accuracy: float) -> dict:
    return {
        "version": version,
        "time": 2.5 * version,
        "test_accuracy": accuracy,
        "test_loss": 1.0,
        "bytes_down": 2048,
        "bytes_up": 1024,
        "refused": 1,
    }


def _text(display: ProgressDisplay) -> str:
    console = Console(width=120, record=True, file=io.StringIO())
    console.print(display._render())
    return console.export_text()


def test_the_panel_shows_phase_work_in_flight_clock_and_accuracy_history():
    display = ProgressDisplay(10, "fedavg on mnist", "off", clock="wall")
    display.activity = lambda: Activity("aggregating", 3, 7, 2)
    for version, accuracy in enumerate((0.2, 0.5, 0.9), start=1):
        display.update(_row(version, accuracy))
    text = _text(display)
    assert "aggregating: 3 updates in, 7 clients training, 2 evaluating" in text
    assert "wall time" in text and "sim time" not in text and "refused" in text
    assert f"test accuracy {sparkline([0.2, 0.5, 0.9])} 0.200 → 0.900" in text
    with display.phase_of("evaluating"):
        assert "evaluating (aggregating: 3 updates in" in _text(display)
    assert sparkline([0.2, 0.5, 0.9]) == "▁▄█"
    waiting = Activity("training", 0, 0, 20).describe()
    assert waiting == "evaluating: 0 updates in, 0 clients training, 20 evaluating"


def test_library_writes_to_stderr_go_to_the_log_while_the_panel_is_up(tmp_path, capfd):
    log = tmp_path / "stderr.log"
    with ProgressDisplay(3, "run", "rich", stderr_log=log):
        os.write(2, b"E1202 ssl_transport_security.cc: No match found for server name\n")
    os.write(2, b"after the panel\n")
    assert log.read_text() == "E1202 ssl_transport_security.cc: No match found for server name\n"
    errors = capfd.readouterr().err
    assert "No match found" not in errors and "after the panel" in errors
    assert f"library messages from the run are in {log}" in errors


def test_an_empty_stderr_log_is_not_left_behind(tmp_path):
    log = tmp_path / "stderr.log"
    with ProgressDisplay(3, "run", "rich", stderr_log=log):
        sys.stderr.flush()
    assert not log.exists()
