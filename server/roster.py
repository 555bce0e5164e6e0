"""The clients of a run and their device profiles, read from its ledger (`fedcore clients RUN`).

Each client's latest `join` entry gives its profile (architecture, device, cores, memory,
calibrated seconds per step, library versions); its `accepted` entries give how many updates
counted and how many local steps they ran, so a speed-aware strategy's choices are visible.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcore.server.ledger import read_ledger
from fedcore.server.tables import text_table


@dataclass
class RosterEntry:
    """One client: its profile at its latest join, and the updates of it that were accepted."""

    number: int
    name: str
    profile: dict[str, Any]
    joins: int = 1
    accepted_steps: list[int] = field(default_factory=list)


def roster(entries: list[dict[str, Any]]) -> list[RosterEntry]:
    """Clients that joined, in client-number order, from ledger entries."""
    clients: dict[int, RosterEntry] = {}
    for entry in entries:
        if entry["event"] == "join":
            known = clients.get(entry["client"])
            joins = known.joins + 1 if known is not None else 1
            clients[entry["client"]] = RosterEntry(
                entry["client"],
                entry["name"],
                entry["profile"],
                joins,
                known.accepted_steps if known is not None else [],
            )
        elif entry["event"] == "accepted" and entry["client"] in clients:
            clients[entry["client"]].accepted_steps.append(int(entry["steps"]))
    return [clients[number] for number in sorted(clients)]


def _steps(steps: list[int]) -> str:
    if not steps:
        return "-"
    low, high = min(steps), max(steps)
    return str(low) if low == high else f"{low}-{high}"


def format_roster(clients: list[RosterEntry]) -> str:
    """A text table: one row per client, with its profile and accepted work."""
    header = (
        "#",
        "client",
        "arch",
        "device",
        "name",
        "cores",
        "memory",
        "ms/step",
        "accepted",
        "steps",
        "python",
        "torch",
    )
    rows = [header]
    for client in clients:
        profile, libraries = client.profile, client.profile.get("libraries", {})
        rows.append(
            (
                str(client.number),
                client.name,
                profile.get("architecture", "?"),
                profile.get("device", "?"),
                profile.get("device_name", "?"),
                str(profile.get("cores", "?")),
                f"{profile.get('memory_bytes', 0) / 2**30:.1f} GiB",
                f"{profile.get('step_seconds', 0.0) * 1000:.2f}",
                str(len(client.accepted_steps)),
                _steps(client.accepted_steps),
                libraries.get("python", "?"),
                libraries.get("torch", "?"),
            )
        )
    return text_table(rows)


def clients_main(argv: list[str]) -> int:
    """`fedcore clients RUN_DIR`: print the run's clients and profiles; 2 on a bad argument."""
    usage = "usage: fedcore clients RUN_DIR  (a run directory holding ledger.jsonl)"
    if argv in (["-h"], ["--help"]):
        print(usage)
        return 0
    if len(argv) != 1 or argv[0].startswith("-"):
        print(usage, file=sys.stderr)
        return 2
    ledger = Path(argv[0]) / "ledger.jsonl"
    if not ledger.is_file():
        print(f"fedcore clients: no ledger at {ledger}", file=sys.stderr)
        return 2
    clients = roster(read_ledger(ledger))
    print(format_roster(clients) if clients else f"fedcore clients: no client joined ({ledger})")
    return 0
