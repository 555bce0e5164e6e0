"""A client's device profile: what it runs on, and how fast it trains, measured at start.

The server records the profile in the ledger's `join` entry and gives its measured seconds per
step to the strategy as the client's first speed estimate.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fedcore.clients.stack import library_versions
from fedcore.config import TrainingConfig
from fedcore.proto import coordinator_pb2 as pb
from fedcore.records import Task

CALIBRATION_STEPS = 5
X86_MACHINES = frozenset({"x86_64", "AMD64", "i386", "i686"})


def memory_bytes() -> int:
    """Physical memory from /proc/meminfo (Linux), else 0 when unknown."""
    try:
        with Path("/proc/meminfo").open(encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _cpuinfo() -> dict[str, str]:
    """The first value of each key of /proc/cpuinfo (empty when unreadable)."""
    fields: dict[str, str] = {}
    try:
        with Path("/proc/cpuinfo").open(encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, sep, value = line.partition(":")
                if sep:
                    fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    """The CPU's model name (x86/Arm `model name`, RISC-V `uarch` or `isa`), else the ISA.

    Under qemu-user the guest reads the host's /proc/cpuinfo: an x86 description seen by a
    non-x86 interpreter is reported with "(emulating <machine>)" so it cannot pass for real.
    """
    fields, machine = _cpuinfo(), platform.machine()
    name = next(
        (fields[key] for key in ("model name", "uarch", "isa") if fields.get(key)),
        platform.processor() or machine,
    )
    if "vendor_id" in fields and machine not in X86_MACHINES:
        return f"{name} (emulating {machine})"
    return name


def calibration_task(training: TrainingConfig, steps: int) -> Task:
    """A task of `steps` local steps with the experiment's training hyper-parameters."""
    config = dataclasses.replace(training, local_steps=steps, local_epochs=0.0)
    return config.task(client_id=0, version=0, rng=np.random.default_rng(0))


def calibrate(
    train_steps: Callable[[int], object],
    steps: int = CALIBRATION_STEPS,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Seconds per local step of `train_steps(n)` (which runs n steps) by `clock`: one warm-up
    step, then `steps` timed, so one-off costs (allocation, first-call dispatch) stay out of
    the figure."""
    if steps < 1:
        raise ValueError(f"calibration needs >= 1 step, got {steps}")
    train_steps(1)
    started = clock()
    train_steps(steps)
    return (clock() - started) / steps


def device_profile(device: torch.device, step_seconds: float) -> pb.DeviceProfile:
    """Architecture, device (CUDA name and memory, or CPU model), cores, memory, library
    versions, and the calibrated seconds per step."""
    on_cuda = device.type == "cuda"
    libraries = library_versions()
    libraries["python"] = platform.python_version()
    return pb.DeviceProfile(
        architecture=platform.machine(),
        device_type=device.type,
        device_name=torch.cuda.get_device_name(device) if on_cuda else cpu_model(),
        cores=os.cpu_count() or 1,
        memory_bytes=memory_bytes(),
        device_memory_bytes=torch.cuda.get_device_properties(device).total_memory if on_cuda else 0,
        step_seconds=step_seconds,
        libraries=libraries,
    )


def profile_line(profile: pb.DeviceProfile) -> str:
    """One human-readable line of a profile, as the client prints it at start."""
    memory = f"{profile.memory_bytes / 2**30:.1f} GiB"
    if profile.device_type == "cuda":
        memory += f", device {profile.device_memory_bytes / 2**30:.1f} GiB"
    return (
        f"{profile.architecture} {profile.device_type} ({profile.device_name}, "
        f"{profile.cores} cores, {memory}), {profile.step_seconds * 1000:.1f} ms/step, "
        f"python {profile.libraries['python']} torch {profile.libraries['torch']}"
    )
