"""What a run reports, the same for simulation and deployment: evaluation of each published
model, metrics rows in the run directory, the live display, and the closing summary."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from fedcore.memory import peak_rss_bytes
from fedcore.server.coordinator import Publication, model_digest
from fedcore.server.evaluation import Evaluator, Scorer
from fedcore.server.experiment import Experiment
from fedcore.server.ledger import Ledger
from fedcore.server.progress import ProgressDisplay
from fedcore.server.rundir import RunDirectory
from fedcore.strategies.base import GlobalModel


def open_ledger(experiment: Experiment, run_path: Path | None) -> Ledger:
    """The run's ledger: on disk in the run directory when there is one and it is wanted."""
    if run_path is None or not experiment.config.output.ledger:
        return Ledger()
    run_path.mkdir(parents=True, exist_ok=True)
    return Ledger(run_path / "ledger.jsonl")


class RunReport:
    """Listens to publications; evaluates every `evaluation.every` versions and the last one."""

    def __init__(
        self,
        experiment: Experiment,
        config_data: dict[str, Any],
        run_path: Path | None,
        traffic: Callable[[], tuple[int, int]],
        resume_version: int | None = None,
    ) -> None:
        config = experiment.config
        self.experiment = experiment
        self.evaluator = Evaluator(
            Scorer(experiment.build_model, experiment.layout),
            experiment.federation.dataset.test,
            config.evaluation,
            config.seed,
        )
        self.run_dir = (
            RunDirectory(run_path, config_data, resume_version) if run_path is not None else None
        )
        self.title = (
            f"{config.strategy['name']} on {config.dataset.name} ({config.partition.scheme})"
        )
        self.progress = ProgressDisplay(config.rounds, self.title, config.output.progress)
        self.traffic = traffic
        self.rows: list[dict[str, Any]] = list(self.run_dir.rows) if self.run_dir else []
        #: Rows not yet written, in version order: (row, whether clients are still evaluating).
        self._pending: list[tuple[dict[str, Any], bool]] = []

    def __enter__(self) -> RunReport:
        self.progress.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.progress.__exit__(kind, error, trace)

    def record(self, publication: Publication) -> None:
        """Evaluate and log a publication when it is due; a row whose federated evaluation is
        still running is written when `federated` completes it."""
        version = publication.model.version
        last = version >= self.experiment.config.rounds
        if version % self.experiment.config.evaluation.every and not last:
            return
        down, up = self.traffic()
        row: dict[str, Any] = {
            "version": version,
            "time": round(publication.time, 6),
            **{k: v for k, v in publication.info.items() if isinstance(v, int | float)},
            "train_loss": publication.train_loss,
            "accepted": publication.accepted,
            "bytes_down": down,
            "bytes_up": up,
            **self.evaluator(publication.model),
        }
        self._pending.append((row, publication.evaluating))
        self._flush()

    def federated(self, version: int, metrics: dict[str, float]) -> None:
        """The clients' example-weighted evaluation of `version` (a coordinator listener)."""
        self._pending = [
            ({**row, **metrics}, False) if row["version"] == version else (row, waiting)
            for row, waiting in self._pending
        ]
        self._flush()

    def _flush(self, everything: bool = False) -> None:
        """Write the leading rows that are complete (all of them with `everything`)."""
        while self._pending and (everything or not self._pending[0][1]):
            row, _ = self._pending.pop(0)
            self.rows.append(row)
            if self.run_dir is not None:
                self.run_dir.append(row)
            self.progress.update(row)

    def finish(self, final: GlobalModel, ledger: Ledger, **details: Any) -> dict[str, Any]:
        """Write the run directory's closing artefacts and return the summary (rows whose
        federated evaluation never completed are written without it)."""
        self._flush(everything=True)
        down, up = self.traffic()
        summary = {
            **details,
            "versions": final.version,
            "bytes_down": down,
            "bytes_up": up,
            "final": self.rows[-1] if self.rows else {},
            "ledger": dict(ledger.counts),
            "model_sha256": model_digest(final),
            "peak_rss_bytes": peak_rss_bytes(),
            "threads": torch.get_num_threads(),
        }
        if self.run_dir is not None:
            output = self.experiment.config.output
            self.run_dir.finish(
                final,
                self.experiment.layout,
                summary,
                save_model=output.save_model,
                plot=output.plot,
                title=self.title,
            )
        return summary
