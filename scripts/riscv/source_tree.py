"""Run the `fedcore` command from a source tree that is not installed (the riscv64 userland).

    python3 scripts/riscv/source_tree.py client --server ... --id ...

The packages are mapped to their folders exactly as pyproject.toml's `package-dir` maps them
for pip (`fedcore.clients` -> `clients/`, ...), so the tree runs as the installed package does.
Standard library only: it runs before anything can check the client's libraries.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


class SourceTreeFinder(importlib.abc.MetaPathFinder):
    """Finds the packages that pyproject.toml maps to folders of other names."""

    def __init__(self, folders: dict[str, Path]) -> None:
        self.folders = folders

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        """A package spec for a mapped package name, else None (the normal finders go on)."""
        folder = self.folders.get(fullname)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(
            fullname, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )


def install(repo: Path = REPO) -> None:
    """Make `import fedcore...` load from `repo`, mapped as its pyproject.toml says."""
    config = tomllib.loads((repo / "pyproject.toml").read_text(encoding="utf-8"))
    package_dir: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    sys.meta_path.insert(
        0, SourceTreeFinder({name: repo / folder for name, folder in package_dir.items()})
    )


if __name__ == "__main__":
    install()
    from fedcore.cli import main

    main(sys.argv[1:])
