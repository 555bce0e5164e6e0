"""Process memory: the figures runs and benchmarks report, and giving back file-mapped pages."""

from __future__ import annotations

import resource
import sys

import torch

#: madvise(2) advice: drop the range's page-table entries (a shared file mapping keeps its data).
MADV_DONTNEED = 4


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def release_file_pages(tensor: torch.Tensor) -> None:
    """Drop a file-mapped tensor's pages (a spooled upload) from this process's resident set:
    they stay in the page cache and the next read maps them again, so uploads held for a later
    fold weigh on the machine's cache, not on the server's memory. Other tensors are left as
    they are."""
    storage = tensor.untyped_storage()
    if storage.filename is None or storage.nbytes() == 0 or sys.platform != "linux":
        return
    import ctypes  # only here: the client's import path stays within the riscv64 userland's

    libc = ctypes.CDLL(None, use_errno=True)
    address, length = ctypes.c_void_p(storage.data_ptr()), ctypes.c_size_t(storage.nbytes())
    if libc.madvise(address, length, MADV_DONTNEED):
        raise OSError(ctypes.get_errno(), "madvise(MADV_DONTNEED) of a spooled upload failed")
