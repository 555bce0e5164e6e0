"""A run's metrics as TensorBoard scalars too (`output.tensorboard=true`), for people who
watch their runs there: the `tensorboard` extra (`pip install -e .[tensorboard]`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fedcore.typed_config import ConfigError

#: Row columns that are not metrics.
NOT_METRICS = frozenset({"version"})


class TensorBoardLog:
    """Writes each metrics row's numbers as scalars at step = model version, in
    `RUN/tensorboard` (`tensorboard --logdir RUN_OR_SWEEP` shows them, runs side by side)."""

    def __init__(self, run_path: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "output.tensorboard: the tensorboard package is not installed; "
                "pip install -e '.[tensorboard]' (or output.tensorboard=false)"
            ) from None
        self.writer = SummaryWriter(log_dir=str(run_path / "tensorboard"))

    def write(self, row: dict[str, Any]) -> None:
        """Add the row's finite numbers."""
        for key, value in row.items():
            if key in NOT_METRICS or isinstance(value, bool):
                continue
            if isinstance(value, int | float) and math.isfinite(value):
                self.writer.add_scalar(key, value, global_step=int(row["version"]))

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()
