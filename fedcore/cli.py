"""The `fedcore` command: `fedcore sim [hydra overrides]` and `fedcore certs ...`.

`sim` hands its arguments to Hydra unchanged, so overrides, `-m` sweeps, `--cfg job` and
`--help` behave as Hydra users expect.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

USAGE = """usage: fedcore <command> [args]

commands:
  sim     run a simulated federation: fedcore sim [key=value ...] [-m for sweeps]
  certs   make a CA, server and client certificates:
          fedcore certs init --dir DIR --server-name NAME (--clients N | --client ID ...)
          fedcore certs add-client --dir DIR --client ID
"""


def _run_simulation(cfg: Any) -> None:
    """Hydra task function: validate, run, and report errors without a traceback."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from fedcore.data import DatasetUnavailable
    from fedcore.server.simulation import simulate
    from fedcore.typed_config import ConfigError

    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    run_path = Path(HydraConfig.get().runtime.output_dir)
    try:
        summary = simulate({str(k): v for k, v in data.items()}, run_path)
    except (ConfigError, DatasetUnavailable) as exc:
        print(f"fedcore: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    final = summary["final"]
    print(
        f"done: {summary['stop_reason']}; test accuracy {final.get('test_accuracy', float('nan')):.4f} "
        f"after {summary['versions']} versions, {summary['virtual_seconds']:.1f} simulated s; "
        f"run directory {run_path}"
    )


def sim(argv: list[str]) -> None:
    """Run `fedcore sim` with Hydra parsing `argv`."""
    import hydra

    main = hydra.main(config_path="pkg://fedcore.conf", config_name="config", version_base="1.3")(
        _run_simulation
    )
    sys.argv = ["fedcore sim", *argv]
    main()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `fedcore` console script."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return
    command, rest = args[0], args[1:]
    if command == "sim":
        sim(rest)
        return
    if command == "certs":
        from fedcore.certs import certs_main

        raise SystemExit(certs_main(rest))
    print(f"fedcore: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    main()
