"""Mean cross-entropy and accuracy of a model on a split: the one scoring loop behind central
evaluation on the server and federated evaluation on each client."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fedcore.data.split import Split


@torch.no_grad()
def score(
    forward: Callable[[torch.Tensor], torch.Tensor],
    data: Split,
    device: torch.device,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Loss, accuracy and example count of `forward` (inputs to logits) on `data`."""
    total_loss = torch.zeros((), dtype=torch.float64)
    correct = 0
    order = torch.arange(len(data))
    for start in range(0, len(data), batch_size):
        x, y = data.batch(order[start : start + batch_size])
        logits = forward(x.to(device))
        y = y.to(device)
        total_loss += nn.functional.cross_entropy(logits, y, reduction="sum").double().cpu()
        correct += int((logits.argmax(dim=1) == y).sum())
    count = max(1, len(data))
    return {"loss": float(total_loss) / count, "accuracy": correct / count, "examples": len(data)}
