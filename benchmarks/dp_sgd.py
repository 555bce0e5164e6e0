"""What DP-SGD costs a client: seconds per local step of the `dpsgd` technique in each clipping
mode (ghost norms, or per-example gradients: `clients/per_example.py`) against plain SGD on the
default MLP (784-200-10, batch 64, one thread), through the same trainer a client runs (Poisson
sampling, per-example clipping, noise, fedcore's step).

`python -m benchmarks.dp_sgd [--quick] [--out DIR]` prints the table and writes dp_sgd.json.
The target: ghost clipping (the default) costs at most 3x a plain step. Modes are timed in
interleaved passes, best of several, so machine load falls on all of them alike.
"""

from __future__ import annotations

from functools import partial

import torch

from benchmarks.common import best_times, environment, make_parser, print_table, write_result
from fedcore.clients.trainer import LocalTrainer, keyed_by_run
from fedcore.data.federated import DatasetInfo
from fedcore.data.split import Split
from fedcore.models import build_model
from fedcore.records import Task

#: Ghost clipping may cost at most this multiple of a plain step.
TARGET_RATIO = 3.0
BATCH = 64
MODES: dict[str, dict[str, float]] = {
    "plain": {},
    "ghost": {"max_grad_norm": 1.0, "noise_multiplier": 1.0, "ghost": 1.0},
    "hooks": {"max_grad_norm": 1.0, "noise_multiplier": 1.0, "ghost": 0.0},
}


def measure(steps: int, repeats: int) -> dict[str, float]:
    """Best seconds per step of each mode."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    mnist_like = Split(torch.randn(BATCH * 100, 1, 28, 28), torch.randint(0, 10, (BATCH * 100,)))
    info = DatasetInfo("mnist-shaped", "image", (1, 28, 28), 10)
    trainer = LocalTrainer(partial(build_model, "mlp", info), private_seed=keyed_by_run(0))
    start = trainer.bound.params.clone()
    buffers = torch.zeros(0)

    def run(mode: str) -> None:
        hyper = {"lr": 0.05, "batch_size": float(BATCH), **MODES[mode]}
        task = Task(0, 0, "sgd" if mode == "plain" else "dpsgd", steps, hyper)
        trainer.run(task, start.clone(), buffers, mnist_like)

    best = best_times({mode: partial(run, mode) for mode in MODES}, repeats)
    return {mode: seconds / steps for mode, seconds in best.items()}


def main() -> None:
    """Measure, print the table, write the JSON."""
    args = make_parser(__doc__ or "").parse_args()
    steps, repeats = (5, 2) if args.quick else (50, 5)
    per_step = measure(steps, repeats)
    ratios = {mode: per_step[mode] / per_step["plain"] for mode in MODES}
    print_table(
        f"DP-SGD step on the default MLP (batch {BATCH}, one thread, best of {repeats})",
        ["mode", "ms per step", "x plain"],
        [[mode, f"{per_step[mode] * 1e3:.2f}", f"{ratios[mode]:.2f}x"] for mode in MODES],
    )
    passed = ratios["ghost"] <= TARGET_RATIO
    print(f"ghost clipping {ratios['ghost']:.2f}x a plain step (target <= {TARGET_RATIO}x)")
    result = {
        "benchmark": "dp_sgd",
        "quick": args.quick,
        "environment": environment(),
        "steps": steps,
        "batch_size": BATCH,
        "seconds_per_step": per_step,
        "ratio_to_plain": ratios,
        "target_ratio": TARGET_RATIO,
        "passed": passed,
    }
    write_result("dp_sgd", result, args.out)


if __name__ == "__main__":
    main()
