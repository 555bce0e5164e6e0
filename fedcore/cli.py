"""The `fedcore` command: `sim` and `server` (Hydra configs), `client`, `clients` and `certs`.

`sim` and `server` hand their arguments to Hydra unchanged, so overrides, `-m` sweeps,
`--cfg job` and `--help` behave as Hydra users expect. Hydra is imported only by those two:
`client` must run on the RISC-V userland, which has no hydra-core.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

USAGE = """usage: fedcore <command> [args]

commands:
  sim     run a simulated federation: fedcore sim [key=value ...] [-m for sweeps]
  server  run the coordinator: fedcore server [key=value ...] (deployment.address, deployment.certs)
  client  run a client: fedcore client --server HOST:PORT --id ID --certs DIR --config RUN/config.yaml
          [--device auto|cpu|cuda] [--slow SECONDS]
  clients list a run's clients and their device profiles: fedcore clients RUN_DIR
  report  compare runs and sweeps: fedcore report DIR [DIR ...] [--target ACCURACY] [--plot FILE]
  certs   make a CA, server and client certificates:
          fedcore certs init --dir DIR --server-name NAME (--clients N | --client ID ...)
          fedcore certs add-client --dir DIR --client ID

options:
  --version  print fedcore's version
"""


#: Exit status after Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130


def _resolved(cfg: Any) -> tuple[dict[str, Any], Path, list[str]]:
    """The composed config as plain data, the run directory Hydra chose, and the overrides
    this run was composed with (a sweep's job has its own)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    hydra = HydraConfig.get()
    return (
        {str(k): v for k, v in data.items()},
        Path(hydra.runtime.output_dir),
        [str(o) for o in hydra.overrides.task],
    )


def _reporting_errors(run: Callable[[], T]) -> T:
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


def _run_simulation(cfg: Any) -> bool:
    """Hydra task function of `fedcore sim`: whether the run finished its work (a diverged
    run did not; the sweep it belongs to goes on, and exits 1 at its end)."""
    from fedcore.server.divergence import DIVERGED
    from fedcore.server.simulation import INTERRUPTED, simulate

    data, run_path, overrides = _resolved(cfg)
    summary = _reporting_errors(lambda: simulate(data, run_path, overrides))
    if summary["stop_reason"].startswith(INTERRUPTED):
        print(f"fedcore: {summary['stop_reason']}; what it did is in {run_path}", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED)
    if summary["stop_reason"].startswith(DIVERGED):
        print(f"fedcore: {summary['stop_reason']}; run directory {run_path}", file=sys.stderr)
        return False
    accuracy = summary["final"].get("test_accuracy", float("nan"))
    print(
        f"done: {summary['stop_reason']}; test accuracy {accuracy:.4f} after "
        f"{summary['versions']} versions, {summary['virtual_seconds']:.1f} simulated s; "
        f"run directory {run_path}"
    )
    return True


def _announce_port(port: int) -> None:
    print(f"fedcore server listening on port {port}", flush=True)


def _run_server(cfg: Any) -> bool:
    """Hydra task function of `fedcore server`: serve until the last model version; whether
    the run finished its work (not when every client left or the run diverged)."""
    from fedcore.server.deployment import ALL_GONE, deploy
    from fedcore.server.divergence import DIVERGED

    data, run_path, overrides = _resolved(cfg)
    summary = _reporting_errors(lambda: deploy(data, run_path, _announce_port, overrides))
    print(
        f"done: {summary['stop_reason']}; {summary['versions']} versions; run directory {run_path}"
    )
    return not summary["stop_reason"].startswith((ALL_GONE, DIVERGED))


def _hydra(task: Callable[[Any], bool], name: str, argv: list[str]) -> None:
    """Run a Hydra task function over the packaged configs with `argv` as its command line.
    Overrides are checked first (an unknown key or preset is one line); a command line Hydra
    itself cannot compose is a usage error too: exit 2, not Hydra's 1. Exit 1 when a run (of a
    sweep: any) did not finish its work."""
    import hydra
    from omegaconf import OmegaConf

    from fedcore.overrides import check_overrides

    _reporting_errors(lambda: check_overrides(argv))
    OmegaConf.register_new_resolver("run_suffix", run_namer(argv), replace=True)
    started, unfinished = False, 0

    def job(cfg: Any) -> None:
        nonlocal started, unfinished
        started = True
        unfinished += not task(cfg)

    main = hydra.main(config_path="pkg://fedcore.conf", config_name="config", version_base="1.3")
    sys.argv = [f"fedcore {name}", *argv]
    try:
        main(job)()
    except SystemExit as exit_:
        if exit_.code == 1 and not started:
            raise SystemExit(2) from None
        raise
    if unfinished:
        raise SystemExit(1)


#: Longest override text a run directory's name carries.
RUN_NAME_CHARS = 120
#: An override value that a sweep (`-m`) varies: a list of choices or a sweep function.
SWEPT = re.compile(r",|^\w+\(")


def _key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


def run_namer(argv: list[str]) -> Callable[[Any], str]:
    """The `run_suffix` resolver for this command line: what a run directory's name adds to
    its time or sweep number (`conf/config.yaml`): `_` and the run's overrides, in a sweep
    only those the sweep varies, so its directories say what they hold."""
    multirun = any(arg in ("-m", "--multirun") for arg in argv)
    swept = {
        _key(arg)
        for arg in argv
        if "=" in arg and not arg.startswith("-") and SWEPT.search(arg.partition("=")[2])
    }

    def suffix(overrides: Any) -> str:
        items = [str(o) for o in overrides if not multirun or _key(str(o)) in swept]
        name = ",".join(items).replace("/", "_")[:RUN_NAME_CHARS]
        return f"_{name}" if name else ""

    return suffix


def huge_pages() -> None:
    """Ask torch to back model-sized tensors with transparent huge pages (unless the
    environment says otherwise): a fresh 100 MB buffer then costs 50 page faults instead of
    25,000, which was a fifth of a deployed round's CPU (`benchmarks/transport.py`). Torch
    reads the setting at its first allocation, so this runs before anything imports it."""
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `fedcore` console script: Ctrl-C anywhere is one line and exit 130."""
    huge_pages()
    try:
        _command(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:
        print("fedcore: interrupted", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None


def _command(args: list[str]) -> None:
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return
    if args[0] == "--version":
        from fedcore import __version__

        print(f"fedcore {__version__}")
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
    elif command == "report":
        from fedcore.server.comparison import report_main

        raise SystemExit(report_main(rest))
    elif command == "certs":
        from fedcore.certs import certs_main

        raise SystemExit(certs_main(rest))
    else:
        print(f"fedcore: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
