"""FedAvg aggregation throughput: the streaming and batch kernels against a plain memory copy.

For each case the N float32 updates of P parameters are generated once, as a stacked [N, P]
tensor, and three things are timed, interleaved, best of `REPEATS`:

- copy: `dst.copy_(stacked)`, the memory-bandwidth baseline;
- streaming: what FedAvg runs per round, `StreamingAccumulator(P)`, `.add(update, weight)` per
  update, then `.mean()`;
- batch: `weighted_sum(stacked, weights) / weights.sum()`;
- receive: the whole path of a round's updates through the server, `Coordinator.receive` of
  each (validation, the norm bound, the FedAvg fold) up to the new model's publication.

Speeds are GB/s of update bytes read (N * P * 4 / seconds); the target is streaming and receive
at least `TARGET_RATIO` of the copy's speed in the cases marked as targeted, on a quiet machine and
with one busy process per core beside it (`cpu_hog`), each against the copy measured under
the same load. Everything runs on the server's torch threads (the experiment's `threads`). With CUDA the same cases
also run on the device: the streaming path with host updates (against a host-to-device copy of
the same bytes) and with updates already there (against a device-to-device copy).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from benchmarks.common import (
    GB,
    best_times,
    cpu_hog,
    environment,
    make_parser,
    no_sync,
    print_table,
    verdict,
    write_result,
)
from fedcore.config import ExperimentConfig
from fedcore.kernels import StreamingAccumulator, weighted_sum
from fedcore.params import ModelLayout, ParamSpec
from fedcore.payloads import DenseDelta
from fedcore.records import Task, Update
from fedcore.server.coordinator import Coordinator
from fedcore.strategies.base import GlobalModel
from fedcore.strategies.fedavg import FedAvg, FedAvgConfig

NAME = "aggregation"
REPEATS = 5
TARGET_RATIO = 0.6
QUICK_DIVISOR = 20
SEED = 0


@dataclass(frozen=True)
class Case:
    """N client updates of P float32 parameters; `targeted` cases are held to TARGET_RATIO."""

    clients: int
    params: int
    targeted: bool

    @property
    def nbytes(self) -> int:
        """Bytes of update data one aggregation reads."""
        return self.clients * self.params * 4

    @property
    def label(self) -> str:
        """`N x P` with P in k or M."""
        params = self.params
        size = f"{params / 1e6:g}M" if params >= 1_000_000 else f"{params / 1e3:g}k"
        return f"{self.clients} x {size}"


CASES = (
    Case(10, 10_000_000, targeted=False),
    Case(100, 1_000_000, targeted=True),
    Case(1000, 100_000, targeted=False),
    Case(50, 25_000_000, targeted=True),
)


def make_updates(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    """The case's updates as one stacked [N, P] tensor, and example-count weights [N]."""
    generator = torch.Generator().manual_seed(SEED)
    stacked = torch.empty(case.clients, case.params).uniform_(-1.0, 1.0, generator=generator)
    weights = torch.randint(1, 1000, (case.clients,), generator=generator).float()
    return stacked, weights


def streaming_mean(
    updates: Sequence[torch.Tensor], weights: Sequence[float], device: torch.device
) -> torch.Tensor:
    """The weighted mean exactly as FedAvg folds a round: one accumulator, one add per update."""
    accumulator = StreamingAccumulator(updates[0].numel(), device)
    for update, weight in zip(updates, weights, strict=True):
        accumulator.add(update, weight)
    return accumulator.mean()


def batch_mean(stacked: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The weighted mean of a stacked [N, P] block as one GEMV."""
    return weighted_sum(stacked, weights) / weights.sum()


class _InstantDriver:
    """A transport whose clients are all present at once: sends and timers are no-ops."""

    def now(self) -> float:
        return 0.0

    def send(self, task: Task, model: GlobalModel) -> None:
        """Nothing to deliver: the benchmark answers the coordinator's outstanding tasks."""

    def schedule(self, at: float, key: str) -> None:
        """FedAvg without a round deadline sets no timers."""


def receiving_server(clients: int, params: int) -> Coordinator:
    """A FedAvg coordinator (the default norm bound) with `clients` clients in its first round."""
    layout = ModelLayout(ParamSpec.from_named([("w", torch.zeros(params))]), ParamSpec(()))
    initial = GlobalModel(torch.zeros(params), torch.zeros(0), 0)
    strategy = FedAvg(FedAvgConfig(clients_per_round=clients), seed=SEED)
    coordinator = Coordinator(
        strategy, layout, initial, _InstantDriver(), max_versions=1 << 30, num_clients=clients
    )
    coordinator.add_clients(range(clients))
    coordinator.start()
    return coordinator


def receive_round(
    coordinator: Coordinator, updates: Sequence[torch.Tensor], examples: Sequence[int]
) -> None:
    """Every client's update of the open round through `Coordinator.receive`; the last one
    closes the round, publishes its model and opens the next."""
    for client, (update, count) in enumerate(zip(updates, examples, strict=True)):
        version = coordinator.outstanding[client].version
        refused = coordinator.receive(
            Update(client, version, count, DenseDelta(update)), then_idle=True
        )
        if refused:
            raise RuntimeError(f"the server refused update {client}: {refused}")


def measure(
    case: Case,
    candidates: dict[str, Callable[[], object]],
    baselines: dict[str, str],
    sync: Callable[[], None] = no_sync,
) -> dict[str, Any]:
    """Time the candidates; return GB/s of each and each measured one's ratio to its baseline."""
    seconds = best_times(candidates, REPEATS, sync)
    gbps = {name: case.nbytes / elapsed / GB for name, elapsed in seconds.items()}
    return {
        "clients": case.clients,
        "params": case.params,
        "update_bytes": case.nbytes,
        "seconds": seconds,
        "gbps": gbps,
        "ratio": {name: gbps[name] / gbps[base] for name, base in baselines.items()},
    }


def cpu_case(case: Case, stacked: torch.Tensor, weights: torch.Tensor) -> dict[str, Any]:
    """Copy, streaming and batch aggregation of one case on the CPU."""
    cpu = torch.device("cpu")
    updates = list(stacked.unbind(0))
    floats = weights.tolist()
    examples = [int(weight) for weight in floats]
    server = receiving_server(case.clients, case.params)
    copy_into = torch.empty_like(stacked)
    row = measure(
        case,
        {
            "copy": lambda: copy_into.copy_(stacked),
            "streaming": lambda: streaming_mean(updates, floats, cpu),
            "batch": lambda: batch_mean(stacked, weights),
            "receive": lambda: receive_round(server, updates, examples),
        },
        {"streaming": "copy", "batch": "copy", "receive": "copy"},
    )
    difference = streaming_mean(updates, floats, cpu) - batch_mean(stacked, weights)
    row["max_abs_difference"] = float(difference.abs().max())
    row["targeted"] = case.targeted
    row["passed"] = (
        min(row["ratio"]["streaming"], row["ratio"]["receive"]) >= TARGET_RATIO
        if case.targeted
        else None
    )
    return row


def cuda_case(case: Case, stacked: torch.Tensor, weights: torch.Tensor) -> dict[str, Any]:
    """Streaming aggregation on CUDA from host and from device updates, and the batch GEMV."""
    cuda = torch.device("cuda")
    on_device = stacked.to(cuda)
    device_weights = weights.to(cuda)
    host_updates = list(stacked.unbind(0))
    device_updates = list(on_device.unbind(0))
    floats = weights.tolist()
    copy_into = torch.empty_like(on_device)
    row = measure(
        case,
        {
            "host_to_device_copy": lambda: copy_into.copy_(stacked),
            "device_copy": lambda: copy_into.copy_(on_device),
            "streaming_host_updates": lambda: streaming_mean(host_updates, floats, cuda),
            "streaming_device_updates": lambda: streaming_mean(device_updates, floats, cuda),
            "batch_device": lambda: batch_mean(on_device, device_weights),
        },
        {
            "streaming_host_updates": "host_to_device_copy",
            "streaming_device_updates": "device_copy",
            "batch_device": "device_copy",
        },
        torch.cuda.synchronize,
    )
    reference = batch_mean(stacked, weights)
    row["max_abs_difference"] = {
        "streaming_host_updates": float(
            (streaming_mean(host_updates, floats, cuda).cpu() - reference).abs().max()
        ),
        "streaming_device_updates": float(
            (streaming_mean(device_updates, floats, cuda).cpu() - reference).abs().max()
        ),
    }
    return row


def cpu_table(rows: list[dict[str, Any]], cases: Sequence[Case], load: str) -> None:
    """Print the CPU results measured under `load`."""
    print_table(
        f"FedAvg aggregation on the CPU, {load} "
        f"(GB/s of update bytes read, best of {REPEATS}, {torch.get_num_threads()} thread(s))",
        [
            "N x P",
            "GB",
            "copy",
            "streaming",
            "receive",
            "batch",
            "stream/copy",
            "receive/copy",
            "batch/copy",
            "target",
        ],
        [
            [
                case.label,
                f"{row['update_bytes'] / GB:.2f}",
                *(f"{row['gbps'][name]:.2f}" for name in ("copy", "streaming", "receive", "batch")),
                *(f"{row['ratio'][name]:.2f}x" for name in ("streaming", "receive", "batch")),
                "-" if row["passed"] is None else f">= {TARGET_RATIO}x {verdict(row['passed'])}",
            ]
            for case, row in zip(cases, rows, strict=True)
        ],
    )


def cuda_table(rows: list[dict[str, Any]], cases: Sequence[Case], device: str) -> None:
    """Print the CUDA results."""
    print_table(
        f"FedAvg aggregation on {device} (GB/s of update bytes read, best of {REPEATS})",
        [
            "N x P",
            "H2D copy",
            "D2D copy",
            "stream host",
            "stream device",
            "batch device",
            "host/H2D",
            "device/D2D",
            "batch/D2D",
        ],
        [
            [
                case.label,
                *(
                    f"{row['gbps'][name]:.1f}"
                    for name in (
                        "host_to_device_copy",
                        "device_copy",
                        "streaming_host_updates",
                        "streaming_device_updates",
                        "batch_device",
                    )
                ),
                *(
                    f"{row['ratio'][name]:.2f}x"
                    for name in (
                        "streaming_host_updates",
                        "streaming_device_updates",
                        "batch_device",
                    )
                ),
            ]
            for case, row in zip(cases, rows, strict=True)
        ],
    )


def cpu_cases(cases: Sequence[Case]) -> list[dict[str, Any]]:
    """Every case on the CPU, one at a time (its updates freed before the next)."""
    rows = []
    for case in cases:
        stacked, weights = make_updates(case)
        rows.append(cpu_case(case, stacked, weights))
        del stacked, weights
        gc.collect()
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """Run every case (scaled down with --quick) quiet and beside a CPU hog, print the tables,
    write the JSON result."""
    args = make_parser("FedAvg aggregation throughput against a memory copy.").parse_args(argv)
    torch.set_num_threads(ExperimentConfig().threads)
    env = environment()
    cases = [
        replace(case, params=case.params // QUICK_DIVISOR) if args.quick else case for case in CASES
    ]
    quiet = cpu_cases(cases)
    with cpu_hog() as hogs:
        hogged = cpu_cases(cases)
    cpu_table(quiet, cases, "quiet")
    cpu_table(hogged, cases, f"beside {hogs} busy processes")
    cuda_rows: list[dict[str, Any]] = []
    has_cuda = torch.cuda.is_available()
    if has_cuda:
        for case in cases:
            stacked, weights = make_updates(case)
            cuda_rows.append(cuda_case(case, stacked, weights))
            del stacked, weights
            torch.cuda.empty_cache()
        cuda_table(cuda_rows, cases, torch.cuda.get_device_name())
    targeted = [row["passed"] for row in quiet + hogged if row["passed"] is not None]
    result = {
        "benchmark": NAME,
        "quick": args.quick,
        "environment": env,
        "repeats": REPEATS,
        "target_ratio": TARGET_RATIO,
        "cpu": quiet,
        "cpu_beside_hog": {"busy_processes": hogs, "cases": hogged},
        "cuda": {"device": torch.cuda.get_device_name(), "cases": cuda_rows}
        if has_cuda
        else "not available",
        "passed": all(targeted),
    }
    print(
        f"streaming and receive >= {TARGET_RATIO}x copy in the targeted cases, quiet and beside "
        "the hog: "
        f"{verdict(all(targeted))}"
    )
    print(f"wrote {write_result(NAME, result, args.out)}")


if __name__ == "__main__":
    main()
