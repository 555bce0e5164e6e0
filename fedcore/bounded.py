"""Bounds on what arrives from outside: JSON parsed only after its nesting depth is checked
(without recursion), and strings cut to a cap before they are stored or logged."""

from __future__ import annotations

import json
from typing import Any

#: Characters of a client-supplied string that are kept (in the ledger, profiles, checkpoints).
MAX_STORED_CHARS = 256
_OPEN, _CLOSE, _QUOTE, _ESCAPE = frozenset(b"[{"), frozenset(b"]}"), ord('"'), ord("\\")


def json_loads(data: bytes | str, max_depth: int) -> Any:
    """`json.loads(data)`, or ValueError when arrays and objects nest deeper than `max_depth`
    (so hostile input cannot exhaust the parser's recursion)."""
    raw = data.encode() if isinstance(data, str) else data
    depth, in_string, escaped = 0, False, False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == _ESCAPE:
                escaped = True
            elif byte == _QUOTE:
                in_string = False
        elif byte == _QUOTE:
            in_string = True
        elif byte in _OPEN:
            depth += 1
            if depth > max_depth:
                raise ValueError(f"JSON nested deeper than {max_depth} levels")
        elif byte in _CLOSE:
            depth -= 1
    return json.loads(raw)


def capped(text: str, limit: int = MAX_STORED_CHARS) -> str:
    """`text`, or its first `limit` characters and a note of how many more there were."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"
