"""A `fedcore client` that poisons every training update it sends with one of the attacks of
benchmarks/poisoning.py: `python -m tests.poison_client ATTACK CLIENT-ARGS...`."""

from __future__ import annotations

import sys

from benchmarks.poisoning import poisoned_run
from fedcore.clients.main import client_main
from fedcore.clients.trainer import LocalTrainer

if __name__ == "__main__":
    LocalTrainer.run = poisoned_run(sys.argv[1])  # type: ignore[method-assign]
    sys.exit(client_main(sys.argv[2:]))
