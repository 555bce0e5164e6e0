"""Bounds on input from outside (`fedcore/bounded.py`): JSON nesting checked before parsing, and
client strings capped before they are stored."""

from __future__ import annotations

import json
import struct

import pytest

from fedcore.bounded import capped, json_loads
from fedcore.serialization import MAGIC, FrameError, parse_header


def test_json_within_the_depth_limit_parses_as_json_does():
    for text in ('{"a": [1, {"b": [2]}]}', '"[[[[[["', '{"k": "\\\\\\"[[["}', "[]", "3"):
        assert json_loads(text, 4) == json.loads(text)


@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_json_nested_past_the_limit_is_refused_without_recursing(opener):
    deep = opener * 8000
    with pytest.raises(ValueError, match="nested deeper than 16 levels"):
        json_loads(deep, 16)


def test_a_frame_header_nested_8000_deep_is_a_frame_error():
    head = ("[" * 8000 + "]" * 8000).encode()
    assert len(head) <= 16 * 1024
    frame = MAGIC + struct.pack("<I", len(head)) + head
    with pytest.raises(FrameError, match="nested deeper than 2 levels"):
        parse_header(frame)


def test_strings_are_capped_with_a_note_of_the_rest():
    assert capped("short") == "short"
    long = "x" * 3_500_000
    kept = capped(long)
    assert kept.startswith("x" * 256) and kept.endswith("(3499744 more characters)")
    assert len(kept) < 300
