"""Ray Train callbacks of the training job (they run in the Ray Train
controller, a process on the driver's node)."""
from __future__ import annotations

from typing import Any

from ray.train import UserCallback

from pipelines.platform import tracking


class MlflowEpochLogger(UserCallback):
    """Logs each epoch's report (rank 0's metrics) to the run's MLflow run
    as it happens, with the epoch as the step; an epoch replayed after a
    restart logs the same step again, which MLflow charts draw as one point."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.tracking_uri = tracking_uri
        self.run_id = run_id

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]],
                     checkpoint: Any) -> None:
        rank0 = metrics[0]
        epoch = int(rank0.get("epoch", 0))
        tracking.log_metrics(self.tracking_uri, self.run_id,
                             {key: value for key, value in rank0.items() if key != "epoch"},
                             step=epoch)
