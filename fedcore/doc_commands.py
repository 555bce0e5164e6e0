"""The `fedcore` commands and plug-in modules the README and docs/ show, read from their code
blocks, so that a test can check each one and `scripts/docs_smoke.py` can run each one."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

#: A fenced code block of shell commands.
SHELL_BLOCK = re.compile(r"```sh\n(.*?)```", re.S)
#: A fenced Python block that is a whole module: its first line names the file.
MODULE_BLOCK = re.compile(r"```python\n# (\w+\.py)\n(.*?)```", re.S)
#: Words that end one shell command and start the next.
SEPARATORS = ("&&", "||", ";", "|")


def documents(root: Path) -> list[Path]:
    """README.md and every page of docs/ under the repository `root`."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def commands(path: Path) -> list[list[str]]:
    """The `fedcore ...` commands in a markdown file's shell blocks, as argument lists without
    the program (`fedcore` or `.venv/bin/fedcore`); continuation lines are joined, comments
    dropped, and `a && b` is two commands."""
    found = []
    for block in SHELL_BLOCK.findall(path.read_text(encoding="utf-8")):
        for line in block.replace("\\\n", " ").splitlines():
            command: list[str] = []
            for word in [*shlex.split(line, comments=True), "&&"]:
                if word not in SEPARATORS:
                    command.append(word)
                    continue
                if command and command[0].split("/")[-1] == "fedcore":
                    found.append(command[1:])
                command = []
    return found


def modules(path: Path) -> dict[str, str]:
    """The modules a markdown file shows whole (a Python block whose first line is
    `# name.py`): file name to source."""
    return dict(MODULE_BLOCK.findall(path.read_text(encoding="utf-8")))
