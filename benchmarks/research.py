"""Issue 4 reproduction benchmark: FedAvg, FedProx, FedLD, FedLAW and FedAMD side by side.

Settings: Fashion-MNIST and MNIST with 20 clients (10 sampled per round) under Dirichlet label
skew alpha 0.1 and 0.5, with a 784-200-10 MLP; and the UCI heart disease data with its 4
hospitals as clients (all 4 per round, `+experiment=heart`). Every method runs from the same
Hydra-composed config through the simulation runtime, 3 seeds each. Shared local training:
10 plain SGD steps (no momentum) of 64 examples at lr 0.01 (FedAMD's and FedLD's reference lr;
heart: 16 examples at lr 0.05 as its experiment config has it). Server data for FedLAW (10 training
examples per class, carved off before partitioning) is carved in every method's run, so all
methods see the same client data. Strategy options are the configs' defaults, which follow the
references: FedProx mu 0.01; FedLD margin 0.03, k 0.8; FedLAW 20 Adam epochs at 0.005;
FedAMD p 0.2, server lr 1, anchors over the whole local set, and `fedamd+init` adds the
reference's initial all-client anchor round (which publishes no model).

Reported per setting and method: test accuracy (2,000 test examples, every round) as mean +- std
over the last 5 rounds of all seeds, rounds to the setting's target accuracy, and local compute
in minibatch forward/backward passes per sampled client per round (an SGD step is 1, a FedAMD
miner step after the first is 2, an anchor is its example count / batch size). Each method is
compared with FedAvg: "better"/"worse" when the difference of the per-seed final means exceeds
the larger of their two seed standard deviations, else "tie".

`python -m benchmarks.research [--quick] [--out DIR]` prints the table and writes
`research.json` and `research.png` (accuracy against round, one panel per setting).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from benchmarks.common import environment, make_parser, print_table, write_result
from fedcore.api import compose
from fedcore.data.split import Split
from fedcore.records import Task, Update
from fedcore.server.coordinator import Publication
from fedcore.server.experiment import make_experiment
from fedcore.server.reporting import RunReport
from fedcore.server.simulation import Simulation

NAME = "research"
LAST_ROUNDS = 5


@dataclass(frozen=True)
class Setting:
    """One data setting: its Hydra overrides and the accuracy counted as reaching the target."""

    name: str
    overrides: tuple[str, ...]
    target: float


@dataclass(frozen=True)
class Method:
    """One method: a strategy with its option overrides."""

    name: str
    overrides: tuple[str, ...]


def _images(dataset: str, alpha: float) -> tuple[str, ...]:
    return (
        f"dataset={dataset}",
        "partition=dirichlet",
        f"partition.alpha={alpha}",
        "model=mlp",
        "num_clients=20",
        "clients_per_round=10",
        "training.batch_size=64",
        "training.lr=0.01",
    )


HEART = ("+experiment=heart", "training.batch_size=16", "training.lr=0.05")
SETTINGS = [
    Setting("fmnist a=0.1", _images("fmnist", 0.1), 0.70),
    Setting("fmnist a=0.5", _images("fmnist", 0.5), 0.75),
    Setting("mnist a=0.1", _images("mnist", 0.1), 0.85),
    Setting("mnist a=0.5", _images("mnist", 0.5), 0.90),
    Setting("heart (4 hospitals)", HEART, 0.75),
]
METHODS = [
    Method("fedavg", ("strategy=fedavg",)),
    Method("fedprox", ("strategy=fedprox",)),
    Method("fedld", ("strategy=fedld",)),
    Method("fedlaw", ("strategy=fedlaw",)),
    Method("fedamd", ("strategy=fedamd",)),
    Method("fedamd+init", ("strategy=fedamd", "strategy.init_round=true")),
]
COMMON = (
    "training.local_steps=10",
    "training.momentum=0.0",
    "training.weight_decay=0.0",
    "client_profiles=uniform",
    "server_data.examples_per_class=10",
    "evaluation.every=1",
    "evaluation.test_examples=2000",
    "evaluation.federated_clients=0",
    "output.progress=off",
    "simulation.workers=0",  # in-process: ComputeMeter wraps this process's trainer
)


@dataclass(frozen=True)
class Plan:
    """How much to run: rounds, seeds, and which settings."""

    rounds: int
    seeds: tuple[int, ...]
    settings: tuple[Setting, ...]


FULL = Plan(rounds=100, seeds=(0, 1, 2), settings=tuple(SETTINGS))
QUICK = Plan(rounds=3, seeds=(0,), settings=(SETTINGS[1], SETTINGS[4]))


class ComputeMeter:
    """Wraps `LocalTrainer.run` to add up each task's forward/backward work and seconds."""

    def __init__(self, train: Callable[[Task, torch.Tensor, torch.Tensor, Split], Update]) -> None:
        self.train = train
        self.passes = 0.0
        self.seconds = 0.0
        self.tasks = 0

    def __call__(
        self, task: Task, params: torch.Tensor, buffers: torch.Tensor, data: Split
    ) -> Update:
        """Train, counting passes (FedAMD reports `grad_examples`; SGD does steps x batch)."""
        update = self.train(task, params, buffers, data)
        batch = max(1, min(int(task.hyper.get("batch_size", 32)), len(data)))
        examples = update.metrics.get("grad_examples", float(update.local_steps * batch))
        self.passes += examples / batch
        self.seconds += update.compute_seconds
        self.tasks += 1
        return update


def run_one(overrides: Sequence[str]) -> dict[str, Any]:
    """One simulated run: test accuracy of every version and cumulative compute per version."""
    config = compose(*overrides)
    experiment = make_experiment(config)
    simulation = Simulation(experiment, config)
    meter = ComputeMeter(simulation.trainer.run)
    simulation.trainer.run = meter
    report = RunReport(
        experiment,
        config,
        None,
        lambda: {"bytes_down": simulation.bytes_down, "bytes_up": simulation.bytes_up},
    )
    passes: list[float] = []

    def on_publish(publication: Publication) -> None:
        passes.append(meter.passes)
        report.record(publication)

    started = time.perf_counter()
    with report:
        simulation.run(on_publish)
    return {
        "accuracy": [row["test_accuracy"] for row in report.rows],
        "cumulative_passes": passes,
        "tasks": meter.tasks,
        "compute_seconds": meter.seconds,
        "wall_seconds": time.perf_counter() - started,
        "clients_per_round": experiment.config.clients_per_round,
    }


def rounds_to(accuracy: Sequence[float], target: float) -> int | None:
    """The first round (model version) whose accuracy reaches `target`, or None."""
    return next((i + 1 for i, a in enumerate(accuracy) if a >= target), None)


def summarize(setting: Setting, runs: list[dict[str, Any]], rounds: int) -> dict[str, Any]:
    """Final accuracy, rounds to target and compute over one method's seeds in one setting."""
    last = [a for run in runs for a in run["accuracy"][-LAST_ROUNDS:]]
    per_seed = [statistics.fmean(run["accuracy"][-LAST_ROUNDS:]) for run in runs]
    reached = [rounds_to(run["accuracy"], setting.target) for run in runs]
    per_client_round = [
        run["cumulative_passes"][-1] / (rounds * run["clients_per_round"]) for run in runs
    ]
    return {
        "final_mean": statistics.fmean(last),
        "final_std": statistics.pstdev(last),
        "final_per_seed": per_seed,
        "seed_std": statistics.pstdev(per_seed),
        "rounds_to_target": reached,
        "passes_per_client_round": statistics.fmean(per_client_round),
        "compute_seconds_per_client_round": statistics.fmean(
            run["compute_seconds"] / (rounds * run["clients_per_round"]) for run in runs
        ),
    }


def versus_fedavg(mine: dict[str, Any], fedavg: dict[str, Any]) -> str:
    """better / worse / tie against FedAvg, judged on per-seed final means."""
    difference = statistics.fmean(mine["final_per_seed"]) - statistics.fmean(
        fedavg["final_per_seed"]
    )
    margin = max(mine["seed_std"], fedavg["seed_std"])
    if abs(difference) <= margin:
        return f"tie ({difference:+.3f})"
    return f"{'better' if difference > 0 else 'worse'} ({difference:+.3f})"


def _reached(steps: list[int | None]) -> str:
    hit = [s for s in steps if s is not None]
    if not hit:
        return f"not reached (0/{len(steps)})"
    return f"{statistics.fmean(hit):.1f} ({len(hit)}/{len(steps)})"


def plot(results: dict[str, dict[str, list[dict[str, Any]]]], plan: Plan, path: Path) -> None:
    """Accuracy against round, one panel per setting: seed mean, shaded between min and max."""
    columns = min(3, len(plan.settings))
    rows = -(-len(plan.settings) // columns)
    figure, grid = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.6 * rows), squeeze=False)
    axes = list(grid.flat)
    for axis, setting in zip(axes, plan.settings, strict=False):
        for method in METHODS:
            runs = results[setting.name][method.name]
            curves = torch.tensor([run["accuracy"] for run in runs])
            rounds = range(1, curves.shape[1] + 1)
            axis.plot(rounds, curves.mean(0), label=method.name, linewidth=1.2)
            axis.fill_between(rounds, curves.min(0).values, curves.max(0).values, alpha=0.15)
        axis.axhline(setting.target, color="grey", linestyle=":", linewidth=1)
        axis.set_title(setting.name)
        axis.set_xlabel("round (model version)")
        axis.set_ylabel("test accuracy")
        axis.grid(alpha=0.3)
    spares = axes[len(plan.settings) :]
    for spare in spares:
        spare.axis("off")
    if spares:
        spares[0].legend(*axes[0].get_legend_handles_labels(), loc="center")
    else:
        axes[0].legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> None:
    """Run every (setting, method, seed), print the table, write the JSON and the plot."""
    args = make_parser("FedAvg, FedProx, FedLD, FedLAW and FedAMD on the issue-4 settings.")
    options = args.parse_args(argv)
    plan = QUICK if options.quick else FULL
    torch.set_num_threads(1)
    env = environment()
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for setting in plan.settings:
        results[setting.name], summary[setting.name] = {}, {}
        for method in METHODS:
            runs = []
            for seed in plan.seeds:
                overrides = (
                    *setting.overrides,
                    *method.overrides,
                    *COMMON,
                    f"rounds={plan.rounds}",
                    f"seed={seed}",
                )
                run = run_one(overrides)
                run["overrides"] = list(overrides)
                runs.append(run)
                print(
                    f"{setting.name:>20} {method.name:>12} seed {seed}: "
                    f"final {run['accuracy'][-1]:.4f} ({run['wall_seconds']:.1f} s)",
                    flush=True,
                )
            results[setting.name][method.name] = runs
            summary[setting.name][method.name] = summarize(setting, runs, plan.rounds)
    rows = []
    for setting in plan.settings:
        fedavg = summary[setting.name]["fedavg"]
        for method in METHODS:
            entry = summary[setting.name][method.name]
            entry["versus_fedavg"] = (
                "-" if method.name == "fedavg" else versus_fedavg(entry, fedavg)
            )
            rows.append(
                [
                    setting.name,
                    method.name,
                    f"{entry['final_mean']:.4f} +- {entry['final_std']:.4f}",
                    f"{setting.target:.2f}",
                    _reached(entry["rounds_to_target"]),
                    f"{entry['passes_per_client_round']:.1f}",
                    f"{entry['compute_seconds_per_client_round'] * 1e3:.1f}",
                    entry["versus_fedavg"],
                ]
            )
    print_table(
        f"Issue-4 reproduction: {plan.rounds} rounds, seeds {list(plan.seeds)}, "
        f"accuracy over the last {LAST_ROUNDS} rounds of all seeds",
        [
            "setting",
            "method",
            "final accuracy",
            "target",
            "rounds to target (reached)",
            "passes/client/round",
            "compute ms/client/round",
            "vs FedAvg",
        ],
        rows,
    )
    out = options.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    figure = out / f"{NAME}.png"
    plot(results, plan, figure)
    result = {
        "benchmark": NAME,
        "quick": options.quick,
        "environment": env,
        "rounds": plan.rounds,
        "seeds": list(plan.seeds),
        "last_rounds": LAST_ROUNDS,
        "settings": {
            s.name: {"overrides": list(s.overrides), "target": s.target} for s in plan.settings
        },
        "methods": {m.name: list(m.overrides) for m in METHODS},
        "common_overrides": list(COMMON),
        "summary": summary,
        "runs": results,
        "figure": str(figure),
        "passed": all(
            len(run["accuracy"]) == plan.rounds
            for by_method in results.values()
            for runs in by_method.values()
            for run in runs
        ),
    }
    print(f"results in {write_result(NAME, result, out)}; figure {figure}")


if __name__ == "__main__":
    main()
