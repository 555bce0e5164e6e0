"""`fedcore client` argument parsing: the resolved experiment config comes from a YAML file
(the server's run directory has one), so a client needs neither Hydra nor the server's code.

The client's libraries are checked before any of them is imported, so a machine without one
(a minimal RISC-V userland, say) gets a message naming each missing package, not a traceback.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from fedcore.clients.stack import MissingLibraries, check_client_stack


def client_arguments(
    server: str, client_id: str, certs: Path, config: Path, server_name: str = ""
) -> list[str]:
    """The arguments after `fedcore client` for these settings (for scripts that launch clients)."""
    arguments = [
        "--server",
        server,
        "--id",
        client_id,
        "--certs",
        str(certs),
        "--config",
        str(config),
    ]
    return [*arguments, "--server-name", server_name] if server_name else arguments


def _seconds(text: str) -> float:
    """A finite, non-negative number of seconds (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, got {text!r}")
    return value


def _local_dp(text: str) -> dict[str, float]:
    """`--local-dp MAX_NORM,NOISE_MULTIPLIER` as the `ldp` transform's options."""
    try:
        max_norm, multiplier = (float(part) for part in text.split(","))
    except ValueError:
        max_norm = multiplier = math.nan
    if not (math.isfinite(max_norm) and max_norm > 0 and math.isfinite(multiplier)) or (
        multiplier <= 0
    ):
        raise argparse.ArgumentTypeError(
            f"want MAX_NORM,NOISE_MULTIPLIER, both finite and > 0, got {text!r}"
        )
    return {"max_norm": max_norm, "noise_multiplier": multiplier}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedcore client")
    parser.add_argument("--server", required=True, help="HOST:PORT of fedcore server")
    parser.add_argument("--id", required=True, help="client id (its certificate's identity)")
    parser.add_argument("--certs", required=True, type=Path, help="folder with ca.pem and clients/")
    parser.add_argument("--config", required=True, type=Path, help="resolved experiment YAML")
    parser.add_argument("--server-name", default="", help="TLS name to expect for the server")
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N; "
        "an explicit cuda without CUDA is an error, never a silent fallback",
    )
    parser.add_argument(
        "--data",
        default="",
        help="train on your own data instead of the config's partition: an .npz with arrays x "
        "and y, or module:function returning (x, y) (see fedcore/clients/local_data.py)",
    )
    parser.add_argument(
        "--state",
        type=Path,
        default=None,
        help="file that keeps the client techniques' state across restarts (e.g. FedAMD's "
        "client-kept anchor gradients); read at start when it exists, rewritten after each task",
    )
    parser.add_argument(
        "--give-up",
        type=_seconds,
        default=600.0,
        help="seconds of failing to reach the server after which to exit with an error "
        "(0: keep trying)",
    )
    parser.add_argument(
        "--local-dp",
        type=_local_dp,
        default=None,
        metavar="MAX_NORM,NOISE_MULTIPLIER",
        help="this client's own local DP floor: every update is clipped to at most MAX_NORM and "
        "noised with at least NOISE_MULTIPLIER, whatever the server asks (docs/privacy.md)",
    )
    parser.add_argument(
        "--slow",
        type=_seconds,
        default=0.0,
        help="extra seconds to sleep per local step (to emulate a slow device)",
    )
    return parser


def _run(args: argparse.Namespace) -> int:
    """Load the config, pick the device, and work until DONE (imports the client stack)."""
    import yaml

    from fedcore.clients.agent import ClientAgent, ClientFatal, ClientSettings
    from fedcore.clients.device import DeviceUnavailable, client_device
    from fedcore.clients.plugins import load_plugins
    from fedcore.config import ExperimentConfig
    from fedcore.data import DatasetUnavailable
    from fedcore.memory import peak_rss_bytes
    from fedcore.serialization import FrameError
    from fedcore.typed_config import ConfigError, build

    try:
        data = yaml.safe_load(args.config.read_text(encoding="utf-8"))
        data.pop("hydra", None)
        config = build(ExperimentConfig, data)
        load_plugins(config.plugins)
        device = client_device(args.device, config.client_devices)
        device.apply(config.threads)
        settings = ClientSettings(
            args.server, args.id, args.certs, args.server_name, give_up=args.give_up
        )
        agent = ClientAgent(
            settings,
            config,
            step_delay=args.slow,
            device=device,
            data=args.data,
            state=args.state,
            own_transforms={"ldp": args.local_dp} if args.local_dp else None,
        )
        accepted = agent.run()
    except (
        ClientFatal,
        ConfigError,
        DeviceUnavailable,
        DatasetUnavailable,
        FrameError,
        OSError,
    ) as error:
        print(f"fedcore client {args.id}: {error}", file=sys.stderr)
        return 1
    print(
        f"fedcore client {args.id}: done, {accepted} updates accepted "
        f"(peak RSS {peak_rss_bytes() / 2**20:.0f} MiB, "
        f"{agent.rss_before_model / 2**20:.0f} MiB before the model)",
        flush=True,
    )
    return 0


def client_main(argv: list[str]) -> int:
    """Run one client; exit 0 when the server says DONE, 1 on a fatal error."""
    args = _parser().parse_args(argv)
    try:
        check_client_stack()
    except MissingLibraries as error:
        print(f"fedcore client {args.id}: {error}", file=sys.stderr)
        return 1
    return _run(args)
