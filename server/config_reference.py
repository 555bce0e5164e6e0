"""docs/configuration.md, generated from the typed config classes and the packaged presets:
every key with its type, its default as `fedcore sim` composes it, and what it does (the
`#:` comment on the field, else the comment beside the key in its YAML preset).

`python -m fedcore.server.config_reference > docs/configuration.md` writes it; a test keeps
the file equal to what this prints, so the reference cannot drift from the code.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import textwrap
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from fedcore.api import compose
from fedcore.config import ExperimentConfig
from fedcore.overrides import presets
from fedcore.strategies.registry import STRATEGIES

#: `key: value  # comment` in a YAML preset (block style).
YAML_COMMENT = re.compile(r"^(?P<indent>\s*)(?P<key>[\w]+):.*?#\s*(?P<comment>.*)$")
YAML_KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[\w]+):")


def type_name(kind: Any) -> str:
    """A config type as a reader would write it: `int`, `"auto" | int`, `list`, ..."""
    origin = get_origin(kind)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(kind))
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in get_args(kind))
    if kind is type(None):
        return "null"
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return getattr(kind, "__name__", str(kind))


def field_comments(cls: type) -> dict[str, str]:
    """The `#:` comment above each field of dataclass `cls` (and of its bases)."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        source = textwrap.dedent(inspect.getsource(klass))
        lines = source.splitlines()
        for node in ast.parse(source).body[0].body:  # type: ignore[attr-defined]
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                above: list[str] = []
                row = node.lineno - 2
                while row >= 0 and lines[row].strip().startswith("#:"):
                    above.insert(0, lines[row].strip().removeprefix("#:").strip())
                    row -= 1
                if above:
                    comments[node.target.id] = " ".join(above)
    return comments


def yaml_comments(path: Path) -> dict[str, str]:
    """The comment beside each key of a YAML preset, by dotted key path."""
    comments: dict[str, str] = {}
    parents: list[tuple[int, str]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        found = YAML_KEY.match(line)
        if not found or line.lstrip().startswith("#"):
            continue
        indent = len(found["indent"])
        while parents and parents[-1][0] >= indent:
            parents.pop()
        key = ".".join([p for _, p in parents] + [found["key"]])
        parents.append((indent, found["key"]))
        commented = YAML_COMMENT.match(line)
        if commented:
            comments[key] = commented["comment"].strip()
    return comments


def _rows(
    cls: type, values: dict[str, Any], notes: dict[str, str], prefix: str = ""
) -> list[tuple[str, str, str, str]]:
    """(key, type, default, description) of every leaf of dataclass `cls`."""
    hints = get_type_hints(cls)
    comments = field_comments(cls)
    rows = []
    for item in dataclasses.fields(cls):
        if not item.init:
            continue
        key = f"{prefix}{item.name}"
        kind = hints[item.name]
        value = values[item.name] if item.name in values else _field_default(item)
        if dataclasses.is_dataclass(kind) and isinstance(kind, type):
            rows += _rows(kind, value, notes, f"{key}.")
            continue
        note = comments.get(item.name) or notes.get(key, "")
        rows.append((key, type_name(kind), _default(value), note))
    return rows


def _field_default(item: dataclasses.Field[Any]) -> Any:
    """A field's default as plain data: what a key the presets leave out takes."""
    if item.default is not dataclasses.MISSING:
        value = item.default
    else:
        assert item.default_factory is not dataclasses.MISSING, item.name
        value = item.default_factory()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def _default(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _table(rows: list[tuple[str, str, str, str]]) -> str:
    lines = ["| key | type | default | what it does |", "|---|---|---|---|"]
    for key, kind, default, note in rows:
        cells = (f"`{key}`", f"`{kind}`", f"`{default}`", note)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def reference() -> str:
    """The whole reference, as markdown."""
    conf = Path(__import__("fedcore.conf").conf.__file__).resolve().parent
    composed = compose()
    notes = yaml_comments(conf / "config.yaml")
    sections = {
        "": [
            row
            for row in _rows(ExperimentConfig, composed, notes)
            if "." not in row[0] and row[0] != "strategy"  # strategies have their own section
        ],
    }
    for item in dataclasses.fields(ExperimentConfig):
        kind = get_type_hints(ExperimentConfig)[item.name]
        if dataclasses.is_dataclass(kind) and isinstance(kind, type):
            sections[item.name] = _rows(kind, composed[item.name], notes, f"{item.name}.")
    out = [
        "# Configuration reference",
        "",
        "Every key `fedcore sim` and `fedcore server` take, with the default they compose to",
        "(`conf/config.yaml` and the default presets). Generated by",
        "`python -m fedcore.server.config_reference` from the typed config classes",
        "(`fedcore/config.py`, each strategy's `*Config`); `tests/test_docs.py` keeps it current.",
        "",
        "## Top level",
        "",
        _table(sections.pop("")),
    ]
    for name, rows in sections.items():
        doc = inspect.getdoc(get_type_hints(ExperimentConfig)[name]) or ""
        out += ["", f"## `{name}`", "", " ".join(doc.split()), "", _table(rows)]
    out += [
        "",
        "## Strategies",
        "",
        "`strategy=NAME` picks a preset ([strategies.md](strategies.md)); its options follow.",
    ]
    for name in presets("strategy"):
        config_type, _ = STRATEGIES[name]
        options = compose(f"strategy={name}")["strategy"]
        preset = conf / "strategy" / f"{name}.yaml"
        package = "" if preset.read_text().startswith("# @package _global_") else "strategy."
        strategy_notes = {f"{package}{k}": v for k, v in yaml_comments(preset).items()}
        rows = [  # clients_per_round and training are set at the top level
            row
            for row in _rows(config_type, options, strategy_notes, "strategy.")
            if row[0] != "strategy.clients_per_round"
            and not row[0].startswith("strategy.training.")
        ]
        doc = " ".join((inspect.getdoc(config_type) or "").split())
        out += ["", f"### `strategy={name}`", "", doc, "", _table(rows)]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(reference(), end="")
