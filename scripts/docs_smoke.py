"""Run every `fedcore` command the README and docs/ show, as shown, and say which failed.

    .venv/bin/python scripts/docs_smoke.py            # as documented (about an hour on 2 cores)
    .venv/bin/python scripts/docs_smoke.py --quick    # each run cut to one model version
    .venv/bin/python scripts/docs_smoke.py --quick deployment.md   # one page's commands

Commands run in a scratch directory, in the order the pages show them, so that a page's
`fedcore report multirun/...` reads the sweep it ran and its deployment commands (certificates,
server, clients, `fedcore clients run`, revocation) run together: the server in the
background, each client against it, placeholders (`HOST`, `DATE/TIME`) filled in, and a
guide's plug-in modules written beside them.
`tests/test_docs.py` checks in CI that each of them composes; this runs them.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fedcore.doc_commands import commands, documents, modules

ROOT = Path(__file__).resolve().parent.parent
FEDCORE = [sys.executable, "-m", "fedcore.cli"]
#: The environment of every command: the repository's own modules importable, as they are for
#: a command run from its root (`plugins=[tests.plugins.sign_sgd]`).
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
}


def _filled(command: list[str], scratch: Path, quick: bool) -> list[str]:
    """The command with placeholders filled in (and, quick, its runs cut to one version)."""
    filled = [w.replace("HOST:", "localhost:") for w in command]
    if filled[0] == "report":
        sweeps = sorted(scratch.glob("multirun/*/*"), key=lambda p: p.stat().st_mtime)
        filled = ["report", str(sweeps[-1] if sweeps else scratch / "multirun"), *filled[2:]]
    if quick and filled[0] in ("sim", "server") and "--cfg" not in filled:
        filled.append("rounds=1")
    return filled


def _listening(address: str, timeout: float = 180.0) -> None:
    """Wait until something accepts connections at `address` (HOST:PORT)."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex((host.replace("0.0.0.0", "127.0.0.1"), int(port))) == 0:
                return
        time.sleep(0.5)


def run_page(page: Path, scratch: Path, quick: bool) -> list[tuple[str, int, float]]:
    """Run a page's commands in `scratch`: (command line, exit status, seconds) each. A server
    and its clients run in the background until the next other command or the page's end."""
    results: list[tuple[str, int, float]] = []
    background: list[tuple[list[str], subprocess.Popen[bytes], float]] = []

    def finish() -> None:
        for line, process, started in sorted(background, key=lambda b: b[0][0] == "server"):
            code = process.wait(timeout=3600)
            results.append((shlex.join(line), code, time.monotonic() - started))
        background.clear()

    for name, source in modules(page).items():  # a guide's plug-ins, importable from here
        (scratch / name).write_text(source, encoding="utf-8")
    for command in commands(page):
        line = _filled(command, scratch, quick)
        started = time.monotonic()
        if line[0] in ("server", "client"):
            background.append(
                (line, subprocess.Popen([*FEDCORE, *line], cwd=scratch, env=ENV), started)
            )
            if line[0] == "server":
                address = next(
                    (w.split("=", 1)[1] for w in line if w.startswith("deployment.address=")),
                    "127.0.0.1:50051",
                )
                _listening(address)
            continue
        finish()
        code = subprocess.run([*FEDCORE, *line], cwd=scratch, env=ENV, check=False).returncode
        results.append((shlex.join(line), code, time.monotonic() - started))
    finish()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="cut each run to one version")
    parser.add_argument("pages", nargs="*", help="only these pages (e.g. README.md deployment.md)")
    args = parser.parse_args()
    table = []
    with tempfile.TemporaryDirectory(prefix="fedcore-docs-") as name:
        for page in documents(ROOT):
            if args.pages and page.name not in args.pages:
                continue
            scratch = Path(name) / page.stem
            scratch.mkdir()
            table += [(page.name, *result) for result in run_page(page, scratch, args.quick)]
    for page_name, line, code, seconds in table:
        status = "ok" if code == 0 else f"exit {code}"
        print(f"{page_name:24} {status:8} {seconds:7.1f} s  fedcore {line}")
    failed = sum(code != 0 for _, _, code, _ in table)
    print(f"{len(table) - failed} of {len(table)} documented commands ran")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
