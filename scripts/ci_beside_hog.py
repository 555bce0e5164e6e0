"""Run `.ci/run` beside one busy process per core, as a loaded laptop or shared server would,
and exit with its status: the suite must pass this way (issue "Fast on a busy machine too").

    rm -rf /tmp/ci && mkdir -p /tmp/ci && cd /tmp/ci && git clone -q /work/main main \\
        && cp -r /work/shared shared && cd main && python3 scripts/ci_beside_hog.py

Standard library only: it runs before `.ci/run` has set anything up.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from multiprocessing import Process


def spin() -> None:
    """Keep one core busy until terminated."""
    while True:
        pass


def main() -> int:
    """Start the hogs, run `.ci/run` (with CI=true), stop the hogs; return its status."""
    hogs = [Process(target=spin, daemon=True) for _ in os.sched_getaffinity(0)]
    for hog in hogs:
        hog.start()
    started = time.monotonic()
    try:
        done = subprocess.run(["bash", ".ci/run"], env={**os.environ, "CI": "true"}, check=False)
    finally:
        for hog in hogs:
            hog.terminate()
    seconds = time.monotonic() - started
    print(f".ci/run exit {done.returncode} after {seconds:.0f} s beside {len(hogs)} busy processes")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
