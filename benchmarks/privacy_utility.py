"""What privacy costs in accuracy: FedAvg on Fashion-MNIST (20 clients, Dirichlet 0.5, the
784-200-10 MLP, 5 clients a round) with local DP on updates and with DP-SGD, each at a whole-run
ε of 1, 3 and 8 per client (δ = 1e-5), beside no privacy, 3 seeds each. Each mode's ε = ∞ row
clips as that mode does but adds no noise: it separates what the clipping costs from what the
noise costs.

Each ε is a budget for the whole run, not per upload: the noise multiplier is calibrated so that
a client reaches ε after the uploads it is planned to make (rounds × clients_per_round /
num_clients, plus a fifth for the luck of the draw), and `privacy.budget` = ε makes sure none
goes past it (a spent client gets no more tasks; the run stops when too few can train).
- local DP: each update clipped to norm 0.1 and noised; z from the exact composition of its
  Gaussian releases (`fedcore/privacy.py`), z = σ(ε, δ) · sqrt(uploads).
- DP-SGD: each example's gradient clipped to 1.0; z from Opacus's RDP accountant at the
  sampling rate of the client with the fewest examples (the highest rate), so every client can
  make its planned uploads.
Shared: 10 local steps of batch 64 at lr 0.05, no momentum; test accuracy on 2,000 test
examples at the last version.

`python -m benchmarks.privacy_utility [--quick] [--out DIR]` prints the table and writes
privacy_utility.json and privacy_utility.png (accuracy against ε, one line per mode).
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks.common import environment, make_parser, print_table, write_result
from fedcore.api import compose, run
from fedcore.privacy import analytic_gaussian_sigma
from fedcore.server.experiment import make_experiment
from fedcore.server.privacy_accounting import rdp_orders

NAME = "privacy_utility"
DELTA = 1e-5
NUM_CLIENTS = 20
CLIENTS_PER_ROUND = 5
LOCAL_STEPS = 10
BATCH = 64
#: The norm bound of an update (local DP) and of an example's gradient (DP-SGD).
MAX_NORM = {"local": 0.1, "dpsgd": 1.0}
COMMON = (
    "dataset=fmnist",
    "partition=dirichlet",
    "partition.alpha=0.5",
    "model=mlp",
    f"num_clients={NUM_CLIENTS}",
    f"clients_per_round={CLIENTS_PER_ROUND}",
    f"training.local_steps={LOCAL_STEPS}",
    f"training.batch_size={BATCH}",
    "training.lr=0.05",
    "training.momentum=0.0",
    "training.weight_decay=0.0",
    "client_profiles=uniform",
    "evaluation.test_examples=2000",
    "evaluation.federated_clients=0",
    "output.progress=off",
    # Every run goes the full length: a run the noise ruins reports its accuracy, not a stop.
    "divergence.loss_factor=0",
)


#: At ε = ∞ each mode clips without noise: what the clipping alone costs.
CLIP_ONLY = {
    "local": (f"training.transforms=[{{name: clip, max_norm: {MAX_NORM['local']}}}]",),
    "dpsgd": (
        "training.technique=dpsgd",
        f"+training.options.max_grad_norm={MAX_NORM['dpsgd']}",
        "+training.options.noise_multiplier=0.0",
    ),
}


@dataclass(frozen=True)
class Plan:
    """How much to run."""

    rounds: int
    seeds: tuple[int, ...]
    epsilons: tuple[float, ...]


FULL = Plan(rounds=40, seeds=(0, 1, 2), epsilons=(1.0, 3.0, 8.0))
QUICK = Plan(rounds=2, seeds=(0,), epsilons=(8.0,))


def planned_uploads(rounds: int) -> int:
    """The uploads each client's noise is calibrated for: its expected share, plus a fifth."""
    return math.ceil(1.2 * rounds * CLIENTS_PER_ROUND / NUM_CLIENTS)


@cache
def fewest_examples(seed: int) -> int:
    """The training examples of the seed's smallest client (its partition is the seed's)."""
    experiment = make_experiment(compose(*COMMON, f"seed={seed}"))
    return min(len(part) for part in experiment.federation.train_parts)


def noise_multiplier(mode: str, epsilon: float, rounds: int, seed: int) -> float:
    """The z at which a client of the seed's federation reaches `epsilon` after its planned
    uploads."""
    uploads = planned_uploads(rounds)
    if mode == "local":
        return analytic_gaussian_sigma(epsilon, DELTA) * math.sqrt(uploads)
    from opacus.accountants.utils import get_noise_multiplier

    examples = fewest_examples(seed)
    with warnings.catch_warnings():
        # Opacus's search tries noise levels whose best order is the largest: it says so.
        warnings.filterwarnings("ignore", "Optimal order is the largest alpha", UserWarning)
        multiplier = get_noise_multiplier(
            target_epsilon=epsilon,
            target_delta=DELTA,
            sample_rate=BATCH / examples,
            steps=uploads * LOCAL_STEPS,
            accountant="rdp",
            alphas=rdp_orders(),  # the orders fedcore's accountant uses
        )
    return float(multiplier)


def one_run(mode: str, epsilon: float, rounds: int, seed: int) -> dict[str, Any]:
    """One seeded run at one privacy level; its last test accuracy and the ε spent."""
    overrides = [*COMMON, f"rounds={rounds}", f"seed={seed}"]
    multiplier = 0.0
    if not math.isfinite(epsilon):
        overrides += CLIP_ONLY.get(mode, ())
    else:
        multiplier = noise_multiplier(mode, epsilon, rounds, seed)
        overrides += [
            f"privacy.mode={mode}",
            f"privacy.max_norm={MAX_NORM[mode]}",
            f"privacy.noise_multiplier={multiplier}",
            f"privacy.delta={DELTA}",
            f"privacy.budget={epsilon}",
        ]
    started = time.perf_counter()
    summary = run(*overrides)
    last = summary["history"][-1]
    return {
        "accuracy": last["test_accuracy"],
        "versions": last["version"],
        "epsilon_max": summary["privacy"]["epsilon_max"] if "privacy" in summary else None,
        "noise_multiplier": multiplier,
        "wall_seconds": time.perf_counter() - started,
    }


def main() -> None:
    """Run every mode and ε over the seeds; print the table, write the JSON and the plot."""
    args = make_parser(__doc__ or "").parse_args()
    plan = QUICK if args.quick else FULL
    cases: dict[str, dict[str, Any]] = {}
    levels = [("none", math.inf)] + [
        (mode, epsilon) for mode in ("local", "dpsgd") for epsilon in (*plan.epsilons, math.inf)
    ]
    for mode, epsilon in levels:
        runs = [one_run(mode, epsilon, plan.rounds, seed) for seed in plan.seeds]
        accuracies = [r["accuracy"] for r in runs]
        cases[f"{mode} eps={epsilon:g}"] = {
            "mode": mode,
            "epsilon_target": epsilon,
            "accuracy_mean": statistics.fmean(accuracies),
            "accuracy_std": statistics.pstdev(accuracies),
            "runs": runs,
        }
    print_table(
        f"FedAvg on fmnist, Dirichlet 0.5, {plan.rounds} rounds, {len(plan.seeds)} seed(s)",
        ["mode", "ε target", "z (seed 0)", "test accuracy", "versions", "ε spent (max)"],
        [
            [
                case["mode"],
                f"{case['epsilon_target']:g}",
                f"{case['runs'][0]['noise_multiplier']:.3g}",
                f"{case['accuracy_mean']:.4f} ± {case['accuracy_std']:.4f}",
                "/".join(str(r["versions"]) for r in case["runs"]),
                f"{max(r['epsilon_max'] for r in case['runs']):.3g}"
                if math.isfinite(case["epsilon_target"])
                else "-",
            ]
            for case in cases.values()
        ],
    )
    result = {
        "benchmark": NAME,
        "quick": args.quick,
        "environment": environment(),
        "rounds": plan.rounds,
        "seeds": list(plan.seeds),
        "delta": DELTA,
        "planned_uploads": planned_uploads(plan.rounds),
        "max_norm": MAX_NORM,
        "cases": cases,
    }
    write_result(NAME, result, args.out)
    plot(cases, args.out / f"{NAME}.png")


def plot(cases: dict[str, dict[str, Any]], path: Path) -> None:
    """Accuracy against ε per mode; no privacy dashed, each mode's clipping alone dotted."""
    figure, axes = plt.subplots(figsize=(6, 4))
    baseline = next(c for c in cases.values() if c["mode"] == "none")
    axes.axhline(baseline["accuracy_mean"], linestyle="--", color="gray", label="no privacy")
    for mode in ("local", "dpsgd"):
        points = [c for c in cases.values() if c["mode"] == mode]
        noised = [c for c in points if math.isfinite(c["epsilon_target"])]
        label = {"local": "local DP on updates", "dpsgd": "DP-SGD"}[mode]
        line = axes.errorbar(
            [c["epsilon_target"] for c in noised],
            [c["accuracy_mean"] for c in noised],
            yerr=[c["accuracy_std"] for c in noised],
            marker="o",
            capsize=3,
            label=label,
        )
        for clip_only in (c for c in points if not math.isfinite(c["epsilon_target"])):
            color = line.lines[0].get_color()
            axes.axhline(clip_only["accuracy_mean"], linestyle=":", color=color)
    axes.set_xscale("log")
    ticks = sorted(
        {c["epsilon_target"] for c in cases.values() if math.isfinite(c["epsilon_target"])}
    )
    axes.set_xticks(ticks, [f"{tick:g}" for tick in ticks])
    axes.minorticks_off()
    axes.set_xlabel("ε per client over the run (δ = 1e-5)")
    axes.set_ylabel("test accuracy")
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
