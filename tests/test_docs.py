"""The docs stay true: the configuration reference is what the code generates, every documented
`fedcore sim`/`server` command composes into a valid experiment, every other documented command
exists, the Python API guide runs, and every link between pages resolves."""

import re
import runpy
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedcore.api import run
from fedcore.doc_commands import commands, documents, modules
from fedcore.server.config_reference import reference
from fedcore.server.experiment import parse_experiment
from tests.conftest import composed

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTED = [(path.name, command) for path in documents(ROOT) for command in commands(path)]
#: Subcommands of `fedcore` (fedcore/cli.py).
SUBCOMMANDS = {"sim", "server", "client", "clients", "report", "certs"}


def test_the_configuration_reference_is_what_the_code_generates():
    current = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert current == reference(), (
        "docs/configuration.md is stale: python -m fedcore.server.config_reference > "
        "docs/configuration.md"
    )


def _first_choices(arguments: list[str]) -> list[str]:
    """A sweep's first job: each comma list of a `-m` command line reduced to its first value."""
    return [
        re.sub(r"=([^\[{]*?),.*$", r"=\1", a) if "=" in a else a
        for a in arguments
        if a not in ("-m", "--multirun")
    ]


@pytest.fixture(scope="module")
def guide_modules(tmp_path_factory) -> Iterator[Path]:
    """The plug-in modules the docs show whole, written out and importable."""
    directory = tmp_path_factory.mktemp("guides")
    for page in documents(ROOT):
        for name, source in modules(page).items():
            (directory / name).write_text(source)
    sys.path.insert(0, str(directory))
    yield directory
    sys.path.remove(str(directory))


def _overrides(command: list[str]) -> list[str]:
    return [a for a in _first_choices(command[1:]) if "=" in a]


@pytest.mark.parametrize(
    "document,command", [d for d in DOCUMENTED if d[1][0] in ("sim", "server")], ids=str
)
def test_every_documented_experiment_command_composes(document, command, guide_modules):
    parse_experiment(composed(*_overrides(command)))


@pytest.mark.parametrize(
    "command",
    [c for _, c in DOCUMENTED if any(a.startswith("plugins=[my_") for a in c)],
    ids=lambda c: c[1],
)
def test_every_extension_guide_runs_with_its_command(command, guide_modules):
    """The model, dataset and strategy guides of docs/extending.md, each for two versions."""
    summary = run(*_overrides(command), "rounds=2", "output.progress=off")
    assert [row["version"] for row in summary["history"]] == [1, 2]
    assert 0 < summary["final"]["test_accuracy"] <= 1


def test_every_documented_command_is_a_fedcore_command():
    assert DOCUMENTED, "the docs show fedcore commands"
    for document, command in DOCUMENTED:
        assert command and command[0] in SUBCOMMANDS, (document, command)


def test_the_python_api_guide_runs(tmp_path, monkeypatch):
    guide = (ROOT / "docs" / "python-api.md").read_text(encoding="utf-8")
    (code,) = re.findall(r"```python\n(.*?)```", guide, re.S)
    script = tmp_path / "guide.py"
    script.write_text(code)
    monkeypatch.chdir(tmp_path)
    namespace = runpy.run_path(str(script))
    result = namespace["result"]
    assert [row["version"] for row in result["history"]] == [1, 2, 3]
    assert result["final"] == result["history"][-1] and result["strategy"] == "fedavg"


def test_links_between_pages_resolve():
    for page in documents(ROOT):
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" not in target:
                assert (page.parent / target).exists(), (page.name, target)
