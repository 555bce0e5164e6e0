"""One poisoner among four clients against default FedAvg: the test accuracy of the honest run,
of each attack with the defaults (updates shrunk to the recent median norm, example counts
capped by what each client declared), and of each attack with both turned off.

The attacks (client 0 poisons every update it sends): `flip10`, its delta sign-flipped and x10;
`count`, sign-flipped and claiming 10^7 examples; `huge`, rescaled to norm 1e12. Runs are
simulations, which a deployed run equals bit for bit (tests/test_deployment_poisoning.py runs
the attacks against a live server). Writes `poisoning.json`; passes when every defended run is
within 2 points of the honest one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from benchmarks.common import (
    environment,
    make_parser,
    print_table,
    verdict,
    write_result,
)
from fedcore.api import compose
from fedcore.clients.trainer import LocalTrainer
from fedcore.payloads import DenseDelta
from fedcore.records import Update
from fedcore.server.experiment import make_experiment
from fedcore.server.reporting import RunReport
from fedcore.server.simulation import Simulation

#: The experiment: synthetic data split IID over 4 clients, a 2-layer MLP, 20 rounds.
OVERRIDES = [
    "dataset=synthetic",
    "model=mlp",
    "partition=iid",
    "num_clients=4",
    "clients_per_round=4",
    "rounds=20",
    "training.local_steps=10",
    "evaluation.federated_clients=0",
    "simulation.workers=0",
]
#: Accuracy points a defended run may lose against the honest one.
TOLERANCE = 0.02


def _values(update: Update) -> torch.Tensor:
    if not isinstance(update.payload, DenseDelta):
        raise TypeError("the attacks poison dense deltas")
    return update.payload.values


#: Each attack, from the honest update to the one sent.
ATTACKS: dict[str, Callable[[Update], Update]] = {
    "flip10": lambda u: replace(u, payload=DenseDelta(_values(u) * -10)),
    "count": lambda u: replace(u, payload=DenseDelta(-_values(u)), num_examples=10**7),
    "huge": lambda u: replace(
        u, payload=DenseDelta(_values(u) / torch.linalg.vector_norm(_values(u)) * 1e12)
    ),
}


def poisoned_run(attack: str, client: int | None = None) -> Callable[..., Update]:
    """`LocalTrainer.run` poisoning the training updates of `client` (of every client when
    None) with `attack`; evaluations stay honest."""
    honest = LocalTrainer.run

    def run(self: LocalTrainer, task: Any, *args: Any, **kwargs: Any) -> Update:
        update = honest(self, task, *args, **kwargs)
        if update.payload is None or client not in (None, task.client_id):
            return update
        return ATTACKS[attack](update)

    return run


def accuracy(config: dict[str, Any], attack: str | None, defended: bool) -> float:
    """Final test accuracy of a simulation of `config` with client 0 running `attack`."""
    if not defended:
        config = {**config, "strategy": {**config["strategy"], "norm_bound": 0}}
    experiment = make_experiment(config)
    simulation = Simulation(experiment, config)
    if not defended:
        simulation.coordinator.declared_examples = None
    honest = LocalTrainer.run
    if attack is not None:
        LocalTrainer.run = poisoned_run(attack, client=0)  # type: ignore[method-assign]
    try:
        final = simulation.run().final
    finally:
        LocalTrainer.run = honest  # type: ignore[method-assign]
    evaluator = RunReport(experiment, config, None, dict).evaluator
    return evaluator(final)["test_accuracy"]


def main() -> None:
    parser = make_parser(__doc__ or "")
    args = parser.parse_args()
    overrides = [*OVERRIDES, "rounds=4"] if args.quick else OVERRIDES
    config = compose(*overrides)
    honest = accuracy(config, None, defended=True)
    results: dict[str, dict[str, float]] = {}
    rows = [("none (honest)", f"{honest:.4f}", "", "")]
    for attack in ATTACKS:
        defended = accuracy(config, attack, defended=True)
        undefended = accuracy(config, attack, defended=False)
        results[attack] = {"defended": defended, "undefended": undefended}
        rows.append((attack, f"{defended:.4f}", f"{undefended:.4f}", f"{defended - honest:+.4f}"))
    print_table(
        "test accuracy, one poisoner of four (FedAvg defaults)",
        ("attack", "defaults", "defaults off", "defaults vs honest"),
        rows,
    )
    passed = all(r["defended"] >= honest - TOLERANCE for r in results.values())
    print(f"every defended run within {TOLERANCE:.0%} of honest: {verdict(passed)}")
    path = write_result(
        "poisoning",
        {
            "benchmark": "poisoning",
            "quick": args.quick,
            "environment": environment(),
            "overrides": overrides,
            "honest": honest,
            "attacks": results,
            "passed": passed,
        },
        args.out,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
