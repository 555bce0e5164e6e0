"""`fedcore client` argument parsing: the resolved experiment config comes from a YAML file
(the server's run directory has one), so a client needs neither Hydra nor the server's code."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from fedcore.clients.agent import ClientAgent, ClientFatal, ClientSettings
from fedcore.config import ExperimentConfig
from fedcore.typed_config import ConfigError, build


def client_main(argv: list[str]) -> int:
    """Run one client; exit 0 when the server says DONE, 1 on a fatal error."""
    parser = argparse.ArgumentParser(prog="fedcore client")
    parser.add_argument("--server", required=True, help="HOST:PORT of fedcore server")
    parser.add_argument("--id", required=True, help="client id (its certificate's identity)")
    parser.add_argument("--certs", required=True, type=Path, help="folder with ca.pem and clients/")
    parser.add_argument("--config", required=True, type=Path, help="resolved experiment YAML")
    parser.add_argument("--server-name", default="", help="TLS name to expect for the server")
    parser.add_argument(
        "--slow",
        type=float,
        default=0.0,
        help="extra seconds to sleep per local step (to emulate a slow device)",
    )
    args = parser.parse_args(argv)
    try:
        data = yaml.safe_load(args.config.read_text(encoding="utf-8"))
        data.pop("hydra", None)
        config = build(ExperimentConfig, data)
        settings = ClientSettings(args.server, args.id, args.certs, args.server_name)
        accepted = ClientAgent(settings, config, step_delay=args.slow).run()
    except (ClientFatal, ConfigError, OSError) as error:
        print(f"fedcore client {args.id}: {error}", file=sys.stderr)
        return 1
    print(f"fedcore client {args.id}: done, {accepted} updates accepted", flush=True)
    return 0
