"""What one (configuration, seed) run of a comparison gave: its test
evaluation at the best validation epoch, its epochs and its costs."""
from __future__ import annotations

import statistics
from dataclasses import dataclass

from pipelines.training.config import TrainConfig
from pipelines.training.engine import EpochResult
from pipelines.training.evaluation import FinalEvaluation


@dataclass(frozen=True)
class RunOutcome:
    """One (configuration, seed) run: its test evaluation at the best
    validation epoch, its epochs, and its costs."""

    configuration: str
    seed: int
    config: TrainConfig
    evaluation: FinalEvaluation
    history: list[EpochResult]
    best_epoch: int
    stop_reason: str
    wall_seconds: float
    n_parameters: int

    @property
    def train_samples(self) -> int:
        return sum(epoch.train_samples for epoch in self.history)

    @property
    def train_seconds(self) -> float:
        return sum(epoch.train_seconds for epoch in self.history)

    @property
    def samples_per_second(self) -> float:
        return self.train_samples / max(self.train_seconds, 1e-9)

    @property
    def median_epoch_seconds(self) -> float:
        return statistics.median(epoch.train_seconds for epoch in self.history)
