"""The `fedcore` command: `sim` and `server` (Hydra configs), `client`, `clients` and `certs`.

`sim` and `server` hand their arguments to Hydra unchanged, so overrides, `-m` sweeps,
`--cfg job` and `--help` behave as Hydra users expect. Hydra is imported only by those two:
`client` must run on the RISC-V userland, which has no hydra-core.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

USAGE = """usage: fedcore <command> [args]

commands:
  sim     run a simulated federation: fedcore sim [key=value ...] [-m for sweeps]
  server  run the coordinator: fedcore server [key=value ...] (deployment.address, deployment.certs)
  client  run a client: fedcore client --server HOST:PORT --id ID --certs DIR --config RUN/config.yaml
          [--device auto|cpu|cuda] [--slow SECONDS]
  clients list a run's clients and their device profiles: fedcore clients RUN_DIR
  certs   make a CA, server and client certificates:
          fedcore certs init --dir DIR --server-name NAME (--clients N | --client ID ...)
          fedcore certs add-client --dir DIR --client ID
"""


def _resolved(cfg: Any) -> tuple[dict[str, Any], Path]:
    """The composed config as plain data, and the run directory Hydra chose."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    return {str(k): v for k, v in data.items()}, Path(HydraConfig.get().runtime.output_dir)


def _reporting_errors(run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run; turn config, missing-data and certificate errors into one clear line and exit 2, and
    a lasting disk fault (the run stopped, resumable) into one line and exit 1."""
    from fedcore.certs import CertError
    from fedcore.data import DatasetUnavailable
    from fedcore.server.disk import DiskFault
    from fedcore.typed_config import ConfigError

    try:
        return run()
    except (ConfigError, DatasetUnavailable, CertError) as exc:
        print(f"fedcore: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except DiskFault as exc:
        print(f"fedcore: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def _run_simulation(cfg: Any) -> None:
    """Hydra task function of `fedcore sim`."""
    from fedcore.server.simulation import simulate

    data, run_path = _resolved(cfg)
    summary = _reporting_errors(lambda: simulate(data, run_path))
    accuracy = summary["final"].get("test_accuracy", float("nan"))
    print(
        f"done: {summary['stop_reason']}; test accuracy {accuracy:.4f} after "
        f"{summary['versions']} versions, {summary['virtual_seconds']:.1f} simulated s; "
        f"run directory {run_path}"
    )


def _announce_port(port: int) -> None:
    print(f"fedcore server listening on port {port}", flush=True)


def _run_server(cfg: Any) -> None:
    """Hydra task function of `fedcore server`: serve until the last model version."""
    from fedcore.server.deployment import ALL_GONE, deploy

    data, run_path = _resolved(cfg)
    summary = _reporting_errors(lambda: deploy(data, run_path, _announce_port))
    print(
        f"done: {summary['stop_reason']}; {summary['versions']} versions; run directory {run_path}"
    )
    if summary["stop_reason"].startswith(ALL_GONE):
        raise SystemExit(1)


def _hydra(task: Callable[[Any], None], name: str, argv: list[str]) -> None:
    """Run a Hydra task function over the packaged configs with `argv` as its command line."""
    import hydra

    main = hydra.main(config_path="pkg://fedcore.conf", config_name="config", version_base="1.3")
    sys.argv = [f"fedcore {name}", *argv]
    main(task)()


def huge_pages() -> None:
    """Ask torch to back model-sized tensors with transparent huge pages (unless the
    environment says otherwise): a fresh 100 MB buffer then costs 50 page faults instead of
    25,000, which was a fifth of a deployed round's CPU (`benchmarks/transport.py`). Torch
    reads the setting at its first allocation, so this runs before anything imports it."""
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `fedcore` console script."""
    huge_pages()
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return
    command, rest = args[0], args[1:]
    if command == "sim":
        _hydra(_run_simulation, command, rest)
    elif command == "server":
        _hydra(_run_server, command, rest)
    elif command == "client":
        from fedcore.clients.main import client_main

        raise SystemExit(client_main(rest))
    elif command == "clients":
        from fedcore.server.roster import clients_main

        raise SystemExit(clients_main(rest))
    elif command == "certs":
        from fedcore.certs import certs_main

        raise SystemExit(certs_main(rest))
    else:
        print(f"fedcore: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
