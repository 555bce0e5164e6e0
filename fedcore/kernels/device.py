"""Choosing where kernels run: `auto` takes CUDA when present, else the CPU."""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """Map `auto`, `cpu`, `cuda` or `cuda:N` to a device, failing clearly if CUDA is absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported kernel device {name!r}; use auto, cpu or cuda[:N]")
    return device
