"""A deployed client's device: selection with clean fallback, per-device settings, and the same
update from a task on any device up to rounding."""

from __future__ import annotations

import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import yaml

from fedcore.clients.device import ClientDevice, DeviceUnavailable, client_device, select_device
from fedcore.clients.profile import device_profile
from fedcore.clients.trainer import LocalTrainer
from fedcore.config import ClientDevicesConfig, DeviceSettings, ExperimentConfig
from fedcore.data import load_dataset
from fedcore.models import build_model
from fedcore.records import Task
from fedcore.typed_config import ConfigError, build

HAS_CUDA = torch.cuda.is_available()
needs_cuda = [
    pytest.mark.cuda,
    pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (run on the GPU machine)"),
]


def _assert_refused_in_child(script: str) -> None:
    """Run `script` in a fresh interpreter (a budget is process-wide): it must exit cleanly after
    printing that the allocation over its budget was refused."""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "refused:" in done.stdout


def test_auto_takes_cuda_only_when_available_and_cpu_is_always_cpu() -> None:
    assert select_device("auto", lambda: False) == torch.device("cpu")
    assert select_device("auto", lambda: True) == torch.device("cuda")
    assert select_device("cpu", lambda: True) == torch.device("cpu")
    assert select_device("cuda", lambda: True) == torch.device("cuda")


def test_asking_for_cuda_without_it_is_a_clear_error_not_a_fallback() -> None:
    for requested in ("cuda", "cuda:0"):
        with pytest.raises(DeviceUnavailable, match=f"--device {requested}: CUDA is not available"):
            select_device(requested, lambda: False)
    with pytest.raises(DeviceUnavailable, match="expected one of auto, cpu, cuda"):
        select_device("tpu", lambda: True)


def test_the_device_kind_picks_its_settings() -> None:
    devices = ClientDevicesConfig(cpu=DeviceSettings(threads=3), cuda=DeviceSettings(threads=7))
    chosen = client_device("cpu", devices)
    assert chosen.device == torch.device("cpu") and chosen.settings.threads == 3


def test_per_device_settings_are_typed_config_with_errors_naming_the_key() -> None:
    config = build(ExperimentConfig, {"client_devices": {"cuda": {"dtype": "bfloat16"}}})
    assert config.client_devices.cuda.dtype == "bfloat16"
    assert config.client_devices.cpu == DeviceSettings()
    for bad, key in (
        ({"cpu": {"threads": -1}}, "client_devices.cpu.threads: must be >= 0"),
        ({"cuda": {"memory_budget": -5}}, "client_devices.cuda.memory_budget: must be >= 0"),
        ({"cpu": {"dtype": "float16"}}, "client_devices.cpu.dtype: must be one of"),
        ({"tpu": {}}, "client_devices.tpu: unknown key"),
    ):
        with pytest.raises(ConfigError, match=key):
            build(ExperimentConfig, {"client_devices": bad})


def test_threads_setting_is_applied() -> None:
    before = torch.get_num_threads()
    try:
        ClientDevice(torch.device("cpu"), DeviceSettings(threads=1)).apply(3)
        assert torch.get_num_threads() == 1
        ClientDevice(torch.device("cpu"), DeviceSettings()).apply(3)
        assert torch.get_num_threads() == 3, "0: the experiment's threads"
    finally:
        torch.set_num_threads(before)


def test_cpu_memory_budget_stops_an_allocation_beyond_it() -> None:
    """In a child process (the limit is process-wide): a 1 GiB tensor fits without the budget
    and fails with a budget of 256 MiB above the process's current data memory."""
    script = (
        "import sys, torch\n"
        "from pathlib import Path\n"
        "from fedcore.clients.device import ClientDevice\n"
        "from fedcore.config import DeviceSettings\n"
        "torch.empty(2**28, dtype=torch.float32).fill_(1)\n"
        "status = Path('/proc/self/status').read_text().split('VmData:')[1].split()[0]\n"
        "budget = int(status) * 1024 + 2**28\n"
        "ClientDevice(torch.device('cpu'), DeviceSettings(memory_budget=budget)).apply(1)\n"
        "torch.empty(2**20).fill_(1)\n"
        "try:\n"
        "    torch.empty(2**28, dtype=torch.float32).fill_(1)\n"
        "except RuntimeError as error:\n"
        "    print('refused:', error)\n"
    )
    _assert_refused_in_child(script)


def test_bfloat16_autocast_changes_only_the_arithmetic_precision() -> None:
    """Same task under autocast: float32 master weights and delta, the same batches (so the
    loss trajectory agrees to bf16 precision), but not bit-identical arithmetic."""
    dataset = load_dataset("synthetic", num_train=400, num_test=10)
    trainer = LocalTrainer(partial(build_model, "mlp", dataset.info))
    params, buffers = trainer.bound.params.clone(), trainer.bound.buffers.clone()
    task = Task(client_id=0, version=0, local_steps=8, hyper={"batch_size": 32, "lr": 0.05}, seed=3)
    exact = trainer.run(task, params, buffers, dataset.train)
    plain = ClientDevice(torch.device("cpu"), DeviceSettings())
    with plain.compute():
        assert not torch.is_autocast_enabled("cpu")
        again = trainer.run(task, params, buffers, dataset.train)
    assert torch.equal(again.payload.values, exact.payload.values)
    with ClientDevice(torch.device("cpu"), DeviceSettings(dtype="bfloat16")).compute():
        assert torch.is_autocast_enabled("cpu")
        low = trainer.run(task, params, buffers, dataset.train)
    assert low.payload.values.dtype == torch.float32
    assert not torch.equal(low.payload.values, exact.payload.values)
    scale = exact.payload.values.abs().max()
    assert (low.payload.values - exact.payload.values).abs().max() < 0.05 * scale
    assert low.metrics["train_loss"] == pytest.approx(exact.metrics["train_loss"], rel=0.005)


@pytest.mark.skipif(HAS_CUDA, reason="checks the refusal on a machine without CUDA")
def test_fedcore_client_device_cuda_without_cuda_exits_1_with_the_reason(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"dataset": {"name": "synthetic"}, "model": {"name": "mlp"}}))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedcore.cli",
            *["client", "--server", "127.0.0.1:1", "--id", "c0", "--device", "cuda"],
            *("--certs", str(tmp_path), "--config", str(config)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "--device cuda: CUDA is not available" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (run on the GPU machine)")
def test_a_task_on_cuda_gives_the_cpu_update_up_to_rounding() -> None:
    """Batches and seeds come from CPU generators, so only the arithmetic differs."""
    dataset = load_dataset("synthetic", num_train=400, num_test=10)
    build_mlp = partial(build_model, "mlp", dataset.info)
    on_cpu = LocalTrainer(build_mlp)
    on_gpu = LocalTrainer(build_mlp, device=select_device("auto"))
    assert on_gpu.device.type == "cuda"
    params, buffers = on_cpu.bound.params.clone(), on_cpu.bound.buffers.clone()
    task = Task(
        client_id=0, version=0, local_steps=10, hyper={"batch_size": 32, "lr": 0.05}, seed=9
    )
    cpu_update = on_cpu.run(task, params, buffers, dataset.train)
    gpu_update = on_gpu.run(task, params, buffers, dataset.train)
    assert gpu_update.payload.values.device.type == "cpu"
    assert torch.allclose(gpu_update.payload.values, cpu_update.payload.values, atol=1e-5, rtol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (run on the GPU machine)")
def test_cuda_profile_names_the_device_and_its_memory() -> None:
    device = select_device("cuda")
    made = device_profile(device, 0.01)
    assert made.device_type == "cuda"
    assert made.device_name == torch.cuda.get_device_name(device)
    assert made.device_memory_bytes == torch.cuda.get_device_properties(device).total_memory > 0


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (run on the GPU machine)")
def test_cuda_memory_budget_caps_the_allocator() -> None:
    """In a child process (the cap is process-wide): 1 GiB fits, then 2 GiB beyond a 1 GiB
    budget is refused as out of memory."""
    script = (
        "import torch\n"
        "from fedcore.clients.device import ClientDevice\n"
        "from fedcore.config import DeviceSettings\n"
        "ClientDevice(torch.device('cuda'), DeviceSettings(memory_budget=2**30)).apply(1)\n"
        "small = torch.empty(2**26, device='cuda')\n"
        "try:\n"
        "    torch.empty(2**29, device='cuda')\n"
        "except torch.OutOfMemoryError as error:\n"
        "    print('refused:', type(error).__name__)\n"
    )
    _assert_refused_in_child(script)


def test_a_budget_beyond_the_gpu_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checked against the device's memory before torch's allocator is touched."""

    class Properties:
        total_memory = 2**30

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Properties())
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Fake GPU")
    cuda = ClientDevice(torch.device("cuda"), DeviceSettings(memory_budget=2**31))
    with pytest.raises(DeviceUnavailable, match="exceeds the 1073741824 bytes of Fake GPU"):
        cuda.apply(1)
