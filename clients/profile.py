"""A client's device profile: what it runs on, and how fast it trains, measured at start."""

from __future__ import annotations

import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import torch

from fedcore.data import Split
from fedcore.proto import coordinator_pb2 as pb
from fedcore.records import Task
from fedcore.training import LocalTrainer

LIBRARIES = ("torch", "numpy", "grpcio", "protobuf", "cryptography")
CALIBRATION_STEPS = 5


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "absent"


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


def cpu_model() -> str:
    """The CPU's model name (or the ISA when /proc/cpuinfo does not say)."""
    try:
        with Path("/proc/cpuinfo").open(encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "uarch", "isa"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def calibrate(trainer: LocalTrainer, data: Split) -> float:
    """Seconds per local step on this device: one warm-up step, then a timed short run."""
    params, buffers = trainer.bound.params.clone(), trainer.bound.buffers.clone()
    hyper = {"batch_size": 32.0, "lr": 0.0}
    trainer.train(Task(client_id=0, version=0, local_steps=1, hyper=hyper), params, buffers, data)
    started = time.perf_counter()
    trainer.train(
        Task(client_id=0, version=0, local_steps=CALIBRATION_STEPS, hyper=hyper),
        params,
        buffers,
        data,
    )
    return (time.perf_counter() - started) / CALIBRATION_STEPS


def device_profile(trainer: LocalTrainer, data: Split) -> pb.DeviceProfile:
    """Architecture, device, cores, memory, library versions and measured seconds per step."""
    device = trainer.device
    on_cuda = device.type == "cuda"
    libraries = {name: _version(name) for name in LIBRARIES}
    libraries["python"] = sys.version.split()[0]
    return pb.DeviceProfile(
        architecture=platform.machine(),
        device_type=device.type,
        device_name=torch.cuda.get_device_name(device) if on_cuda else cpu_model(),
        cores=os.cpu_count() or 1,
        memory_bytes=memory_bytes(),
        device_memory_bytes=torch.cuda.get_device_properties(device).total_memory if on_cuda else 0,
        step_seconds=calibrate(trainer, data),
        libraries=libraries,
    )
