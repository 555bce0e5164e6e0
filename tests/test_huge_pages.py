"""The `fedcore` command backs model-sized tensors with transparent huge pages."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")

#: Touch a fresh 64 MiB tensor after `fedcore.cli.huge_pages()`; print the page faults it took.
TOUCH = """
import resource
from fedcore.cli import huge_pages
huge_pages()
import torch
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.empty(64 << 20, dtype=torch.uint8).fill_(1)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(setting: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if setting is not None:
        env["THP_MEM_ALLOC_ENABLE"] = setting
    done = subprocess.run(
        [sys.executable, "-c", TOUCH], env=env, capture_output=True, text=True, check=True
    )
    return int(done.stdout.strip())


@pytest.mark.skipif(
    not THP.exists() or "[never]" in THP.read_text(), reason="no transparent huge pages here"
)
def test_fedcore_tensors_take_huge_pages_unless_the_environment_says_no():
    default, refused = _faults(None), _faults("0")
    assert refused >= 64 * 256 * 0.9, "4 KiB pages: one fault per page"
    assert default * 20 < refused, (default, refused)
