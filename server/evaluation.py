"""Evaluating a global model: centrally on the test set, and federated on clients' hold-outs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from fedcore.config import EvaluationConfig
from fedcore.data.split import Split
from fedcore.federation import Federation
from fedcore.params import ModelLayout
from fedcore.strategies.base import GlobalModel


class Scorer:
    """Mean cross-entropy and accuracy of flat (params, buffers) vectors on a split.

    The module is built on the meta device (no storage) and run with views of the given vectors
    in place of its tensors, so scoring a model never copies it: the server holds no second
    model-sized buffer for evaluation.
    """

    def __init__(
        self, build: Callable[[], nn.Module], layout: ModelLayout, batch_size: int = 1024
    ) -> None:
        with torch.device("meta"):
            self.module = build().eval()
        self.layout = layout
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(
        self, params: torch.Tensor, buffers: torch.Tensor, data: Split
    ) -> dict[str, float]:
        """Loss, accuracy and example count of (params, buffers) on `data`, on params' device."""
        tensors = {**self.layout.params.unflatten(params), **self.layout.buffers.unflatten(buffers)}
        device = params.device
        total_loss = torch.zeros((), dtype=torch.float64)
        correct = 0
        order = torch.arange(len(data))
        for start in range(0, len(data), self.batch_size):
            x, y = data.batch(order[start : start + self.batch_size])
            logits = functional_call(self.module, tensors, (x.to(device),))
            y = y.to(device)
            total_loss += nn.functional.cross_entropy(logits, y, reduction="sum").double().cpu()
            correct += int((logits.argmax(dim=1) == y).sum())
        count = max(1, len(data))
        return {
            "loss": float(total_loss) / count,
            "accuracy": correct / count,
            "examples": len(data),
        }


class Evaluator:
    """Central test metrics plus example-weighted metrics over a fixed sample of client hold-outs."""

    def __init__(
        self, score: Scorer, federation: Federation, config: EvaluationConfig, seed: int
    ) -> None:
        self.score = score
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
        central = self.score(model.params, model.buffers, self.test)
        metrics["test_loss"], metrics["test_accuracy"] = central["loss"], central["accuracy"]
        if self.holdouts:
            results = [self.score(model.params, model.buffers, h) for h in self.holdouts]
            total = sum(r["examples"] for r in results)
            metrics["fed_loss"] = sum(r["loss"] * r["examples"] for r in results) / total
            metrics["fed_accuracy"] = sum(r["accuracy"] * r["examples"] for r in results) / total
        return metrics
