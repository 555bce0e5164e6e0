"""What a run reports, the same for simulation and deployment: evaluation of each published
model, metrics rows in the run directory, the live display, and the closing summary."""

from __future__ import annotations

import platform
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import torch

from fedcore.config import ExperimentConfig
from fedcore.memory import peak_rss_bytes
from fedcore.server.coordinator import Coordinator, Publication, model_digest
from fedcore.server.divergence import DivergenceGuard
from fedcore.server.evaluation import Evaluator, Scorer
from fedcore.server.experiment import Experiment
from fedcore.server.ledger import Ledger
from fedcore.server.privacy_accounting import PrivacyAccountant
from fedcore.server.progress import Activity, ProgressDisplay
from fedcore.server.rundir import RunDirectory
from fedcore.server.tensorboard_log import TensorBoardLog
from fedcore.strategies.base import GlobalModel


def open_ledger(experiment: Experiment, run_path: Path | None) -> Ledger:
    """The run's ledger: on disk in the run directory when there is one and it is wanted."""
    if run_path is None or not experiment.config.output.ledger:
        return Ledger()
    run_path.mkdir(parents=True, exist_ok=True)
    return Ledger(run_path / "ledger.jsonl")


#: Test examples the divergence guard's reference loss (the initial model's) is taken on.
REFERENCE_EXAMPLES = 256
#: Packages whose versions a summary records (those that can change a run's numbers).
RECORDED_PACKAGES = ("fedcore", "torch", "numpy", "grpcio", "hydra-core")


def provenance(config: ExperimentConfig, overrides: Sequence[str]) -> dict[str, Any]:
    """What a run was, for telling the runs of a sweep apart (`fedcore report`) and for
    running one again: its strategy, data, seed, command-line overrides and library versions."""
    libraries = {"python": platform.python_version()}
    for package in RECORDED_PACKAGES:
        try:
            libraries[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return {
        "strategy": config.strategy["name"],
        "dataset": config.dataset.name,
        "partition": config.partition.scheme,
        "model": config.model.name,
        "seed": config.seed,
        "rounds": config.rounds,
        "overrides": list(overrides),
        "libraries": libraries,
    }


class RunReport:
    """Listens to publications; evaluates every `evaluation.every` versions and the last one."""

    def __init__(
        self,
        experiment: Experiment,
        config_data: dict[str, Any],
        run_path: Path | None,
        counters: Callable[[], dict[str, int]],
        resume_version: int | None = None,
        overrides: Sequence[str] = (),
        stop: Callable[[str], None] | None = None,
        clock: Literal["simulated", "wall"] = "simulated",
    ) -> None:
        """`stop` ends the run when the divergence guard trips (none without it); `clock`
        names the run's time on the panel."""
        config = experiment.config
        self.experiment = experiment
        self.overrides = list(overrides)
        self.clock = clock
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
        self.guard = (
            DivergenceGuard(
                config,
                self.evaluator.first_loss(experiment.initial_model(), REFERENCE_EXAMPLES),
                stop,
            )
            if stop is not None and config.divergence.loss_factor
            else None
        )
        self.progress = ProgressDisplay(
            config.rounds,
            self.title,
            config.output.progress,
            clock,
            stderr_log=run_path / "stderr.log" if run_path is not None else None,
        )
        #: The run's running counts for each row: bytes_down, bytes_up, and what else the
        #: driver counts (a deployment: connections refused).
        self.counters = counters
        self.rows: list[dict[str, Any]] = list(self.run_dir.rows) if self.run_dir else []
        self.tensorboard = (
            TensorBoardLog(run_path) if run_path is not None and config.output.tensorboard else None
        )
        #: The account of clients' privacy loss, when the run keeps one (`follow` sets it).
        self.privacy: PrivacyAccountant | None = None
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

    def follow(self, coordinator: Coordinator) -> None:
        """Show what `coordinator` is doing on the panel, and record its publications."""
        coordinator.listeners.append(self.record)
        coordinator.evaluation_listeners.append(self.federated)
        self.privacy = coordinator.privacy
        self.progress.activity = lambda: Activity(
            coordinator.phase,
            coordinator.accepted_since_publish,
            len(coordinator.outstanding),
            len(coordinator.evaluating),
        )

    def record(self, publication: Publication) -> None:
        """Evaluate and log a publication when it is due; a row whose federated evaluation is
        still running is written when `federated` completes it."""
        version = publication.model.version
        self.progress.published(version)
        if self.guard is not None:
            self.guard.check(version, "the clients' training loss", publication.train_loss)
        stopped = self.guard is not None and self.guard.tripped
        last = version >= self.experiment.config.rounds or stopped
        if version % self.experiment.config.evaluation.every and not last:
            return
        row: dict[str, Any] = {
            "version": version,
            "time": round(publication.time, 6),
            **{k: v for k, v in publication.info.items() if isinstance(v, int | float)},
            "train_loss": publication.train_loss,
            "accepted": publication.accepted,
            **self.counters(),
        }
        if self.privacy is not None:
            row["epsilon"] = self.privacy.worst()
        with self.progress.phase_of("evaluating"):
            row.update(self.evaluator(publication.model))
        if self.guard is not None:
            self.guard.check(version, "the test loss", row["test_loss"])
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
            if self.tensorboard is not None:
                self.tensorboard.write(row)
            self.progress.update(row)

    def finish(self, final: GlobalModel, ledger: Ledger, **details: Any) -> dict[str, Any]:
        """Write the run directory's closing artefacts and return the summary (rows whose
        federated evaluation never completed are written without it)."""
        self._flush(everything=True)
        summary = {
            **provenance(self.experiment.config, self.overrides),
            **details,
            "versions": final.version,
            **self.counters(),
            "final": self.rows[-1] if self.rows else {},
            "ledger": dict(ledger.counts),
            **({"privacy": self.privacy.summary()} if self.privacy is not None else {}),
            "model_sha256": model_digest(final),
            "peak_rss_bytes": peak_rss_bytes(),
            "threads": torch.get_num_threads(),
        }
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.run_dir is not None:
            output = self.experiment.config.output
            self.run_dir.finish(
                final,
                self.experiment.layout,
                summary,
                save_model=output.save_model,
                plot=output.plot,
                title=self.title,
                clock=self.clock,
            )
        return summary
