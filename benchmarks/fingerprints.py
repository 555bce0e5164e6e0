"""Final-model sha256 of every strategy on small seeded simulations: a fingerprint to compare
before and after a refactor that must not change what is computed.

Each case is a 20-client synthetic run (the tests' fast configuration) of one strategy. The
table lists each case's sha256 and test accuracy; `--against FILE` compares with an earlier
`fingerprints.json` and marks every case SAME or DIFF. Seeded runs are bit-for-bit
reproducible on one machine, so on the same machine and library versions DIFF means the
computation changed. Writes `fingerprints.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.common import (
    FAST_OVERRIDES,
    environment,
    make_parser,
    print_table,
    verdict,
    write_result,
)
from fedcore.api import compose
from fedcore.server.simulation import simulate

COMPASS = ["strategy=fedcompass", "strategy.min_local_steps=2"]
CASES: dict[str, list[str]] = {
    "fedavg": [],
    "fedprox": ["strategy=fedprox"],
    "fedavgm": ["strategy=fedavgm"],
    "fedadam": ["strategy=fedadam"],
    "fedasync": ["strategy=fedasync", "rounds=8"],
    "fedbuff": ["strategy=fedbuff", "rounds=4"],
    "fedcompass": [*COMPASS, "rounds=4", "strategy.max_local_steps=8"],
    "fedamd": ["strategy=fedamd"],
    "fedamd_client": ["strategy=fedamd", "strategy.gradient_store=client"],
    "fedld": ["strategy=fedld"],
    "fedlaw": ["strategy=fedlaw"],
    "fedavg_timeout": ["strategy.round_timeout=0.5", "client_profiles=spread10x"],
    "fedavg_epochs": [
        "training.local_epochs=1",
        "training.momentum=0.9",
        "training.weight_decay=0.001",
    ],
    "fedcompass_hetero": [
        *COMPASS,
        "rounds=6",
        "client_profiles=spread10x",
        "strategy.max_local_steps=10",
    ],
}
QUICK = ("fedavg", "fedcompass")


def main() -> None:
    parser = make_parser(__doc__ or "")
    parser.add_argument("--against", type=Path, help="an earlier fingerprints.json to compare")
    args = parser.parse_args()
    earlier = json.loads(args.against.read_text())["sha256"] if args.against else {}
    names = QUICK if args.quick else tuple(CASES)
    sha256, rows = {}, []
    for name in names:
        summary = simulate(compose(*FAST_OVERRIDES, *CASES[name]), None)
        sha256[name] = summary["model_sha256"]
        compared = (
            "" if name not in earlier else "SAME" if earlier[name] == sha256[name] else "DIFF"
        )
        accuracy = summary["final"].get("test_accuracy", float("nan"))
        rows.append((name, sha256[name][:16], f"{accuracy:.4f}", compared))
    print_table("final model sha256 by case", ("case", "sha256", "test acc", "vs earlier"), rows)
    same = all(earlier.get(n, sha256[n]) == sha256[n] for n in names)
    if earlier:
        print(f"all compared cases identical: {verdict(same)}")
    path = write_result(
        "fingerprints",
        {
            "benchmark": "fingerprints",
            "quick": args.quick,
            "environment": environment(),
            "cases": {n: CASES[n] for n in names},
            "sha256": sha256,
            "passed": same,
        },
        args.out,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
