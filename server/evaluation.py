"""Evaluating a global model: centrally on the test set, and federated on clients' hold-outs."""

from __future__ import annotations

import numpy as np
import torch

from fedcore.config import EvaluationConfig
from fedcore.federation import Federation
from fedcore.strategies.base import GlobalModel
from fedcore.training import LocalTrainer


class Evaluator:
    """Central test metrics plus example-weighted metrics over a fixed sample of client hold-outs."""

    def __init__(
        self, trainer: LocalTrainer, federation: Federation, config: EvaluationConfig, seed: int
    ) -> None:
        self.trainer = trainer
        test = federation.dataset.test
        rng = np.random.default_rng([seed, 7])
        if config.test_examples and config.test_examples < len(test):
            keep = np.sort(rng.choice(len(test), size=config.test_examples, replace=False))
            test = test.subset(torch.from_numpy(keep))
        self.test = test
        with_holdout = [c for c, part in enumerate(federation.holdout_parts) if len(part)]
        count = min(config.federated_clients, len(with_holdout))
        chosen = rng.choice(np.asarray(with_holdout, dtype=np.int64), size=count, replace=False)
        self.holdouts = [federation.holdout_split(int(c)) for c in np.sort(chosen)]

    def __call__(self, model: GlobalModel) -> dict[str, float]:
        """Metrics of `model`: test_loss, test_accuracy, fed_loss, fed_accuracy."""
        metrics = {}
        central = self.trainer.evaluate(model.params, model.buffers, self.test)
        metrics["test_loss"], metrics["test_accuracy"] = central["loss"], central["accuracy"]
        if self.holdouts:
            results = [self.trainer.evaluate(model.params, model.buffers, h) for h in self.holdouts]
            total = sum(r["examples"] for r in results)
            metrics["fed_loss"] = sum(r["loss"] * r["examples"] for r in results) / total
            metrics["fed_accuracy"] = sum(r["accuracy"] * r["examples"] for r in results) / total
        return metrics
