"""Federated evaluation: a client scores the received model on its own hold-out (its partition's,
or a share of its `--data`), or a fixed sample of a large one, and returns loss, accuracy and
example count, no payload."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from fedcore.clients.techniques.base import Technique, register
from fedcore.data.split import Split
from fedcore.records import Task, Update
from fedcore.scoring import score
from fedcore.typed_config import require

if TYPE_CHECKING:
    from fedcore.clients.trainer import LocalTrainer

#: The simulated clock charges a forward pass as this share of a training step.
FORWARD_SHARE = 1 / 3


@dataclass(frozen=True)
class EvaluateParams:
    """Examples per forward batch, and at most how many hold-out examples are scored (a sample
    fixed per client, so that its curve stays comparable across versions; 0: all)."""

    batch_size: int = 1024
    max_examples: int = 0

    def __post_init__(self) -> None:
        require(self.batch_size >= 1, "batch_size", "must be >= 1", self.batch_size)
        require(self.max_examples >= 0, "max_examples", "must be >= 0", self.max_examples)


@register
class Evaluate(Technique[EvaluateParams]):
    """Mean cross-entropy and accuracy of the task's model on the client's hold-out."""

    name = "evaluate"
    params_type = EvaluateParams
    payload = "none"
    data = "holdout"

    def run(
        self,
        trainer: LocalTrainer,
        task: Task,
        params: EvaluateParams,
        model: tuple[torch.Tensor, torch.Tensor],
        data: Split,
        reuse_model: bool,
    ) -> Update:
        """Score the model; the metrics are `eval_loss` and `eval_accuracy`."""
        started = time.perf_counter()
        bound = trainer.bound
        bound.load(model[0].to(bound.params.device), model[1].to(bound.params.device))
        bound.module.eval()
        scored = data.sample(params.max_examples, (task.client_id, 9))
        result = score(bound.module, scored, bound.params.device, params.batch_size)
        elapsed = time.perf_counter() - started
        return Update(
            client_id=task.client_id,
            base_version=task.version,
            num_examples=int(result["examples"]),
            payload=None,
            compute_seconds=elapsed,
            wall_seconds=elapsed,
            metrics={"eval_loss": result["loss"], "eval_accuracy": result["accuracy"]},
        )

    def passes(self, task: Task, params: EvaluateParams, num_examples: int) -> float:
        """Forward passes only, over the scored examples in training-sized batches of 32."""
        if params.max_examples:
            num_examples = min(num_examples, params.max_examples)
        return FORWARD_SHARE * math.ceil(num_examples / 32)
