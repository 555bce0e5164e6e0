"""The live panel (`server/progress.py`): what it says while a run is busy, and that a library
writing to the process's stderr cannot break it."""

import io
import os
import pty
import select
import signal
import subprocess
import sys
import time

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


def test_shakespeare_shows_a_moving_panel_before_its_first_round_ends(tmp_path):
    """The preset's first round takes minutes on two cores: the terminal must show the phase
    and the clients at work, with a clock that moves, long before it ends."""
    leader, follower = pty.openpty()
    started = time.monotonic()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedcore.cli",
            "sim",
            "+experiment=shakespeare",
            "rounds=2",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={**os.environ, "COLUMNS": "120", "LINES": "40", "TERM": "xterm"},
        start_new_session=True,
    )
    os.close(follower)
    screen = ""
    seen: dict[str, float] = {}
    try:
        while time.monotonic() - started < 300 and not {"0:00:01", "0:00:02"} <= seen.keys():
            ready, _, _ = select.select([leader], [], [], 1.0)
            if ready:
                screen += os.read(leader, 65536).decode(errors="replace")
            for stamp in ("clients training", "0:00:01", "0:00:02"):
                if stamp in screen and stamp not in seen:
                    seen[stamp] = time.monotonic() - started
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        os.close(leader)
    assert "training: 0 updates in, 10 clients training" in screen, screen[-2000:]
    assert {"0:00:01", "0:00:02"} <= seen.keys(), f"the panel's clock did not move: {seen}"
    assert "1/2" not in screen, "the first round ended before the panel was checked"
    print(f"panel up {seen['clients training']:.1f} s after start")
