"""Evaluating a global model centrally on the test set (clients evaluate their own hold-outs:
`clients/techniques/evaluate.py`), and which simulated clients take part in federated evaluation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode

from fedcore.config import EvaluationConfig
from fedcore.data.split import Split
from fedcore.federation import Federation
from fedcore.params import ModelLayout
from fedcore.scoring import score
from fedcore.strategies.base import GlobalModel


class _SkipInitialisers(TorchFunctionMode):
    """Leaves out the random initialisers a module runs as it is built: on the meta device they
    have nothing to fill, and torch's meta `normal_` (an embedding's) imports torch._dynamo, which
    took 3 s of a run's start-up."""

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func in _INITIALISERS:
            tensor = args[0] if args else kwargs["tensor"]
            if tensor.is_meta:
                return tensor
        return func(*args, **kwargs)


_INITIALISERS = {nn.init.normal_, nn.init.uniform_, nn.init.trunc_normal_}


class Scorer:
    """Mean cross-entropy and accuracy of flat (params, buffers) vectors on a split.

    The module is built on the meta device (no storage) and run with views of the given vectors
    in place of its tensors, so scoring a model never copies it: the server holds no second
    model-sized buffer for evaluation.
    """

    def __init__(
        self, build: Callable[[], nn.Module], layout: ModelLayout, batch_size: int = 1024
    ) -> None:
        with torch.device("meta"), _SkipInitialisers():
            self.module = build().eval()
        self.layout = layout
        self.batch_size = batch_size

    def __call__(
        self, params: torch.Tensor, buffers: torch.Tensor, data: Split
    ) -> dict[str, float]:
        """Loss, accuracy and example count of (params, buffers) on `data`, on params' device."""
        tensors = {**self.layout.params.unflatten(params), **self.layout.buffers.unflatten(buffers)}
        return score(
            lambda x: functional_call(self.module, tensors, (x,)),
            data,
            params.device,
            self.batch_size,
        )


class Evaluator:
    """Central test metrics of a global model, on the whole test set or a fixed sample of it."""

    def __init__(self, score: Scorer, test: Split, config: EvaluationConfig, seed: int) -> None:
        self.score = score
        self.test = test.sample(config.test_examples, (seed, 7))

    def first_loss(self, model: GlobalModel, examples: int) -> float:
        """`model`'s loss on the first `examples` of the test set: a cheap estimate where only
        the scale matters (the divergence guard's reference)."""
        head = self.test.subset(torch.arange(min(examples, len(self.test))))
        return self.score(model.params, model.buffers, head)["loss"]

    def __call__(self, model: GlobalModel) -> dict[str, float]:
        """Metrics of `model`: test_loss, test_accuracy."""
        central = self.score(model.params, model.buffers, self.test)
        return {"test_loss": central["loss"], "test_accuracy": central["accuracy"]}


def evaluation_sample(federation: Federation, config: EvaluationConfig, seed: int) -> list[int]:
    """The fixed, seeded sample of `federated_clients` simulated clients with a hold-out that
    evaluate every due version (a fixed sample keeps the federated curve comparable)."""
    with_holdout = [c for c, part in enumerate(federation.holdout_parts) if len(part)]
    count = min(config.federated_clients, len(with_holdout))
    rng = np.random.default_rng([seed, 8])
    chosen = rng.choice(np.asarray(with_holdout, dtype=np.int64), size=count, replace=False)
    return sorted(int(c) for c in chosen)
