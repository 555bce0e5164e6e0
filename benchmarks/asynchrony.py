"""Synchronous, asynchronous and semi-asynchronous FL on heterogeneous devices, against
simulated time.

16 clients on MNIST with Dirichlet(0.1) label skew, the MLP, device speeds log-uniform from 1x
to 10x (`client_profiles=spread10x`: 20 ms to 200 ms per step), and a fixed simulated-time
budget. FedAvg (synchronous, all 16 clients per round, Q_max steps), FedAsync and FedBuff
(K = 4; all 16 clients training at once, Q_max steps) and FedCompass (steps in
[Q_max / 5, Q_max]) each run with seeds 0, 1, 2 on the same federation, devices and budget.
The central test accuracy (a fixed 2,000-example subset) is measured on the first model
published at or after every `EVAL_EVERY_S` simulated seconds, and on the final model.

Reported per method: simulated seconds to each target accuracy (90 % and 95 %: the first
evaluated model at or above it; resolution one evaluation interval or one publication), the
final accuracy and the tail accuracy (mean of the evaluations in the last 20 % of the budget,
less noisy than one final evaluation), each as mean and spread over seeds, model versions,
and local steps computed. The FedCompass paper's claim is
faster convergence than the asynchronous methods and better efficiency (time to accuracy) than
the synchronous ones; `claim` in the JSON says whether this run reproduces it. Writes
`asynchrony.json` and `asynchrony.png` (accuracy against simulated time, mean over seeds).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from benchmarks.common import (
    environment,
    make_parser,
    print_table,
    verdict,
    write_result,
)
from fedcore.api import compose
from fedcore.records import Task
from fedcore.server.coordinator import Publication
from fedcore.server.evaluation import Evaluator, Scorer
from fedcore.server.experiment import make_experiment
from fedcore.server.simulation import Simulation
from fedcore.strategies.base import GlobalModel

NAME = "asynchrony"
METHODS = ("fedavg", "fedasync", "fedbuff", "fedcompass")
ASYNCHRONOUS = ("fedasync", "fedbuff")
#: Tail accuracy averages the evaluations after this fraction of the budget.
TAIL_FRACTION = 0.8


@dataclass(frozen=True)
class Setting:
    """One benchmark size: data, budget, steps, evaluation grid, seeds and target."""

    dataset: tuple[str, ...]
    budget_s: float
    q_max: int
    eval_every_s: float
    seeds: tuple[int, ...]
    targets: tuple[float, ...]


FULL = Setting(
    dataset=("dataset=mnist", "model=mlp", "partition.alpha=0.1"),
    budget_s=240.0,
    q_max=50,
    eval_every_s=4.0,
    seeds=(0, 1, 2),
    targets=(0.90, 0.95),
)
QUICK = Setting(
    dataset=("dataset=synthetic", "model=mlp", "partition.alpha=0.1"),
    budget_s=12.0,
    q_max=10,
    eval_every_s=1.0,
    seeds=(0,),
    targets=(0.5, 0.8),
)


def overrides(method: str, seed: int, setting: Setting) -> list[str]:
    """Hydra overrides of one run: the shared federation and budget, then the method's own."""
    shared = [
        *setting.dataset,
        f"seed={seed}",
        "num_clients=16",
        "clients_per_round=16",
        "client_profiles=spread10x",
        "rounds=1000000",
        f"simulation.max_time={setting.budget_s}",
        f"training.local_steps={setting.q_max}",
        "evaluation.test_examples=2000",
        "evaluation.federated_clients=0",
        "output.progress=off",
    ]
    own = {
        "fedavg": ["strategy=fedavg"],
        "fedasync": ["strategy=fedasync"],
        "fedbuff": ["strategy=fedbuff", "strategy.buffer_size=4"],
        "fedcompass": [
            "strategy=fedcompass",
            f"strategy.max_local_steps={setting.q_max}",
            f"strategy.min_local_steps={max(1, setting.q_max // 5)}",
        ],
    }[method]
    return shared + own


def run_one(method: str, seed: int, setting: Setting) -> dict[str, Any]:
    """Simulate one (method, seed); return its accuracy curve and counters."""
    config = compose(*overrides(method, seed, setting))
    experiment = make_experiment(config)
    simulation = Simulation(experiment, config)
    evaluator = Evaluator(
        Scorer(experiment.build_model, experiment.layout),
        experiment.federation.dataset.test,
        experiment.config.evaluation,
        seed,
    )
    curve = [(0.0, evaluator(experiment.initial_model())["test_accuracy"])]
    steps = 0
    send = simulation.send

    def counting_send(task: Task, model: GlobalModel) -> None:
        nonlocal steps
        steps += task.local_steps
        send(task, model)

    def listen(publication: Publication) -> None:
        if publication.time >= curve[-1][0] + setting.eval_every_s:
            curve.append((publication.time, evaluator(publication.model)["test_accuracy"]))

    simulation.send = counting_send
    started = time.perf_counter()
    result = simulation.run(listen)
    final = evaluator(result.final)["test_accuracy"]
    tail = [a for t, a in curve if t >= TAIL_FRACTION * setting.budget_s] or [final]
    return {
        "method": method,
        "seed": seed,
        "curve": [[round(t, 3), a] for t, a in curve],
        "final_accuracy": final,
        "tail_accuracy": statistics.mean(tail),
        "time_to_target_s": {
            str(target): next((t for t, a in curve if a >= target), None)
            for target in setting.targets
        },
        "versions": result.final.version,
        "local_steps": steps,
        "simulated_s": result.virtual_seconds,
        "host_seconds": round(time.perf_counter() - started, 2),
    }


def accuracy_at(curve: Sequence[Sequence[float]], at: float) -> float:
    """The accuracy of the last evaluation at or before `at` (a step function of time)."""
    return [a for t, a in curve if t <= at][-1]


def summarise(runs: list[dict[str, Any]], setting: Setting) -> dict[str, dict[str, Any]]:
    """Per method: mean time to each target over the seeds that reached it (and how many did),
    final and tail accuracy (mean and spread over seeds), versions and local steps."""
    summary = {}
    for method in METHODS:
        mine = [r for r in runs if r["method"] == method]
        times: dict[str, float | None] = {}
        reached: dict[str, str] = {}
        for target in map(str, setting.targets):
            hits = [r["time_to_target_s"][target] for r in mine]
            hits = [t for t in hits if t is not None]
            times[target] = statistics.mean(hits) if hits else None
            reached[target] = f"{len(hits)}/{len(mine)}"
        finals = [r["final_accuracy"] for r in mine]
        tails = [r["tail_accuracy"] for r in mine]
        summary[method] = {
            "time_to_target_s": times,
            "reached": reached,
            "final_accuracy_mean": statistics.mean(finals),
            "final_accuracy_std": statistics.pstdev(finals),
            "tail_accuracy_mean": statistics.mean(tails),
            "tail_accuracy_std": statistics.pstdev(tails),
            "versions_mean": statistics.mean(r["versions"] for r in mine),
            "local_steps_mean": statistics.mean(r["local_steps"] for r in mine),
        }
    return summary


def judge(summary: dict[str, dict[str, Any]], setting: Setting) -> dict[str, bool]:
    """Whether FedCompass reaches every target sooner (a target never reached counts as
    slowest) than each asynchronous method and than FedAvg, and whether its tail accuracy is at
    least theirs."""

    def sooner(a: str, b: str) -> bool:
        for target in map(str, setting.targets):
            ta, tb = summary[a]["time_to_target_s"][target], summary[b]["time_to_target_s"][target]
            if ta is None or (tb is not None and ta >= tb):
                return False
        return True

    return {
        "faster_than_asynchronous": all(sooner("fedcompass", m) for m in ASYNCHRONOUS),
        "more_accurate_than_asynchronous": all(
            summary["fedcompass"]["tail_accuracy_mean"] >= summary[m]["tail_accuracy_mean"]
            for m in ASYNCHRONOUS
        ),
        "faster_than_synchronous": sooner("fedcompass", "fedavg"),
    }


def plot(runs: list[dict[str, Any]], setting: Setting, path: Path) -> None:
    """Accuracy against simulated time: per-seed curves thin, the mean over seeds bold."""
    grid = torch.linspace(0, setting.budget_s, 241).tolist()
    figure, axis = plt.subplots(figsize=(9, 5.5), constrained_layout=True)
    for index, method in enumerate(METHODS):
        color = f"C{index}"
        curves = [r["curve"] for r in runs if r["method"] == method]
        for curve in curves:
            axis.step(*zip(*curve, strict=True), where="post", color=color, alpha=0.25, lw=0.8)
        mean = [statistics.mean(accuracy_at(c, t) for c in curves) for t in grid]
        axis.plot(grid, mean, color=color, lw=2, label=method)
    for target in setting.targets:
        axis.axhline(target, color="grey", ls="--", lw=0.8)
    axis.set_xlabel("simulated time [s]")
    axis.set_ylabel("test accuracy (2,000 examples)")
    axis.set_ylim(0.5, 1)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right")
    axis.set_title("16 clients, 1x-10x device speeds, Dirichlet(0.1) label skew")
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> None:
    """Run every (method, seed), print the table, write the JSON and the plot."""
    parser = make_parser(__doc__.splitlines()[0] if __doc__ else NAME)
    args = parser.parse_args(argv)
    setting = QUICK if args.quick else FULL
    torch.set_num_threads(1)
    runs = []
    for seed in setting.seeds:
        for method in METHODS:
            runs.append(run_one(method, seed, setting))
            print(
                f"{method} seed {seed}: final {runs[-1]['final_accuracy']:.4f}, "
                f"to targets {runs[-1]['time_to_target_s']} ({runs[-1]['host_seconds']} s)",
                flush=True,
            )
    summary = summarise(runs, setting)
    claim = judge(summary, setting)
    targets = [str(t) for t in setting.targets]
    rows = [
        [
            method,
            *(
                "-"
                if s["time_to_target_s"][t] is None
                else f"{s['time_to_target_s'][t]:.1f} ({s['reached'][t]})"
                for t in targets
            ),
            f"{s['final_accuracy_mean']:.4f} ± {s['final_accuracy_std']:.4f}",
            f"{s['tail_accuracy_mean']:.4f} ± {s['tail_accuracy_std']:.4f}",
            f"{s['versions_mean']:.0f}",
            f"{s['local_steps_mean']:,.0f}",
        ]
        for method, s in summary.items()
    ]
    print_table(
        f"Simulated seconds to test accuracy (seeds reaching it), and accuracy after "
        f"{setting.budget_s:.0f} s: final, and mean over the last "
        f"{1 - TAIL_FRACTION:.0%} of the budget (mean ± sd over seeds {list(setting.seeds)})",
        [
            "method",
            *(f"time to {float(t):.0%} [s]" for t in targets),
            "final accuracy",
            "tail accuracy",
            "versions",
            "local steps",
        ],
        rows,
    )
    for name, holds in claim.items():
        print(f"FedCompass {name.replace('_', ' ')}: {verdict(holds)}")
    args.out.mkdir(parents=True, exist_ok=True)
    plot_path = args.out / f"{NAME}.png"
    plot(runs, setting, plot_path)
    result = {
        "benchmark": NAME,
        "quick": args.quick,
        "environment": environment(),
        "setting": {
            "dataset": list(setting.dataset),
            "budget_s": setting.budget_s,
            "q_max": setting.q_max,
            "eval_every_s": setting.eval_every_s,
            "seeds": list(setting.seeds),
            "targets": list(setting.targets),
            "overrides": {m: overrides(m, setting.seeds[0], setting) for m in METHODS},
        },
        "summary": summary,
        "claim": claim,
        "passed": all(claim.values()),
        "runs": runs,
        "plot": plot_path.name,
    }
    print(f"wrote {write_result(NAME, result, args.out)} and {plot_path}")


if __name__ == "__main__":
    main()
