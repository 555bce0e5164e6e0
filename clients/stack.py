"""The libraries a deployed client needs, and a start-up check that names any that are missing.

The list is the RISC-V userland's (Debian trixie riscv64: Python 3.13, torch 2.6, numpy 2.2,
grpcio 1.51, protobuf 4.21, PyYAML, omegaconf, cryptography 43): the client imports nothing else, so it runs there from Debian's packages. The check looks modules
up without importing them, which matters where `import torch` takes a minute (under qemu).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from importlib import metadata


@dataclass(frozen=True)
class Library:
    """One library of the client stack: its import name, distribution and install commands."""

    module: str
    distribution: str
    debian: str
    pip: str


CLIENT_LIBRARIES = (
    Library("torch", "torch", "python3-torch", "torch>=2.6"),
    Library("numpy", "numpy", "python3-numpy", "numpy>=2.2"),
    Library("grpc", "grpcio", "python3-grpcio", "grpcio>=1.51"),
    Library("google.protobuf", "protobuf", "python3-protobuf", "protobuf>=4.21"),
    Library("yaml", "PyYAML", "python3-yaml", "PyYAML>=6"),
    Library("cryptography", "cryptography", "python3-cryptography", "cryptography>=43"),
    Library("omegaconf", "omegaconf", "python3-omegaconf", "omegaconf>=2.3"),
)


class MissingLibraries(RuntimeError):
    """Libraries the client needs are not importable; the message says how to install each."""


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package (e.g. `google` for protobuf)
        return False


def missing_libraries(libraries: tuple[Library, ...] = CLIENT_LIBRARIES) -> list[Library]:
    """The libraries among `libraries` that cannot be imported here."""
    return [library for library in libraries if not _importable(library.module)]


def check_client_stack(libraries: tuple[Library, ...] = CLIENT_LIBRARIES) -> None:
    """Raise MissingLibraries naming every missing library with its Debian and pip install."""
    missing = missing_libraries(libraries)
    if not missing:
        return
    lines = [
        f"  {lib.distribution} (import {lib.module}): "
        f"apt-get install {lib.debian}  or  pip install '{lib.pip}'"
        for lib in missing
    ]
    raise MissingLibraries(
        "missing Python packages the client needs:\n"
        + "\n".join(lines)
        + "\n(Debian 13 has all of them on every architecture, riscv64 included)"
    )


def library_versions(libraries: tuple[Library, ...] = CLIENT_LIBRARIES) -> dict[str, str]:
    """Installed version of each library's distribution ("absent" when not installed)."""
    versions = {}
    for library in libraries:
        try:
            versions[library.distribution] = metadata.version(library.distribution)
        except metadata.PackageNotFoundError:
            versions[library.distribution] = "absent"
    return versions
