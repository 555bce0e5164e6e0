"""Which device a deployed client trains on (`--device auto|cpu|cuda`), and that device's
settings from the experiment config (`client_devices.cpu` / `client_devices.cuda`).

Only the arithmetic moves to the device: batch order and every seed stay on CPU generators
(`fedcore.training`), so a task gives the same update on any device up to rounding.
"""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fedcore.config import ClientDevicesConfig, DeviceSettings

DEVICE_CHOICES = ("auto", "cpu", "cuda")


class DeviceUnavailable(RuntimeError):
    """The requested device cannot be used here; the message says why and what to ask instead."""


def select_device(
    requested: str, cuda_available: Callable[[], bool] = torch.cuda.is_available
) -> torch.device:
    """`auto`: CUDA when torch sees a CUDA device, else the CPU; `cpu`; `cuda` or `cuda:N`,
    which never falls back silently: without CUDA it raises DeviceUnavailable."""
    if requested == "auto":
        return torch.device("cuda" if cuda_available() else "cpu")
    if requested == "cpu":
        return torch.device("cpu")
    if requested == "cuda" or requested.startswith("cuda:"):
        if not cuda_available():
            why = "has no CUDA support" if torch.version.cuda is None else "finds no CUDA device"
            raise DeviceUnavailable(
                f"--device {requested}: CUDA is not available (torch {torch.__version__} {why}); "
                "use --device cpu, or --device auto to take CUDA only when present"
            )
        device = torch.device(requested)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceUnavailable(
                f"--device {requested}: only {torch.cuda.device_count()} CUDA device(s) here"
            )
        return device
    raise DeviceUnavailable(f"--device {requested!r}: expected one of {', '.join(DEVICE_CHOICES)}")


@dataclass(frozen=True)
class ClientDevice:
    """The device a client trains on, with the config's settings for that kind of device."""

    device: torch.device
    settings: DeviceSettings

    def apply(self, threads: int) -> None:
        """Apply the process-wide settings once at start: intra-op threads (the device's own
        setting, else `threads`) and memory budget (on CUDA a cap on torch's allocator; on the
        CPU a cap on the process's data memory, RLIMIT_DATA, which qemu-user does not enforce)."""
        torch.set_num_threads(self.settings.threads or threads)
        budget = self.settings.memory_budget
        if not budget:
            return
        if self.device.type == "cuda":
            total = torch.cuda.get_device_properties(self.device).total_memory
            if budget > total:
                raise DeviceUnavailable(
                    f"client_devices.cuda.memory_budget: {budget} bytes exceeds the "
                    f"{total} bytes of {torch.cuda.get_device_name(self.device)}"
                )
            torch.cuda.set_per_process_memory_fraction(budget / total, self.device)
        else:
            _, hard = resource.getrlimit(resource.RLIMIT_DATA)
            soft = budget if hard == resource.RLIM_INFINITY else min(budget, hard)
            resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))

    def compute(self) -> contextlib.AbstractContextManager[object]:
        """The context local training runs in: autocast to the configured dtype (master
        weights, deltas and the wire stay float32), or nothing for float32."""
        if self.settings.dtype == "float32":
            return contextlib.nullcontext()
        # No cast cache: it would keep the first step's low-precision weights for the whole
        # task, since training updates the flat parameters in place inside this one context.
        return torch.autocast(
            self.device.type, dtype=getattr(torch, self.settings.dtype), cache_enabled=False
        )


def client_device(requested: str, devices: ClientDevicesConfig) -> ClientDevice:
    """The selected device and its settings (`devices.cuda` on a GPU, else `devices.cpu`)."""
    device = select_device(requested)
    return ClientDevice(device, devices.cuda if device.type == "cuda" else devices.cpu)
