"""One (configuration, seed) run: train under the budget, keep the best
validation epoch, score it on the test split once."""
from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass

import torch

from models.factory import build_model
from models.steps import build_step
from pipelines.experiments.comparison.configurations import Budget, Configuration
from pipelines.experiments.comparison.data import ComparisonData
from pipelines.serving.bundle import bundle_from_state
from pipelines.training.config import TrainConfig, optimizer_for
from pipelines.training.engine import (
    EpochLoop,
    EpochResult,
    LoopState,
)
from pipelines.training.evaluation import FinalEvaluation, evaluate_bundle

logger = logging.getLogger(__name__)

STOP_EPOCHS, STOP_PATIENCE, STOP_TIME = "epochs", "patience", "time budget"


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


def train_and_test(data: ComparisonData, configuration: Configuration, seed: int, budget: Budget,
                   device: torch.device | str = "cpu") -> RunOutcome:
    """Train one configuration with one seed under ``budget``, keep the best
    validation epoch's weights, score them on the test split (the only time
    the run touches it)."""
    device = torch.device(device)
    started = time.perf_counter()
    config = budget.train_config(data.info, configuration, seed, use_gpu=device.type == "cuda")
    config = config.with_positive_weights(data.train_labels.cpu().numpy())
    model = build_model(config.model).to(device)
    optimizer = optimizer_for(model, config)
    loop = EpochLoop(model, build_step(config.step), optimizer, data.info.spec, device, seed=seed)
    epoch_hook = _EpochHook(budget.seconds, configuration.name, seed, config.epochs)
    fit = loop.fit(lambda epoch: data.train_batches(config.batch_size, seed, epoch),
                   data.valid_batches, epochs=config.epochs, patience=config.patience,
                   on_epoch_end=epoch_hook, keep_best_state=True)
    if fit.best_state_dict is None:
        raise RuntimeError(f"{configuration.name} seed {seed}: no epoch reached a finite validation "
                           "mean AP (does the valid split have tasks with both classes?)")
    bundle = bundle_from_state(config.model, fit.best_state_dict, data.info.spec, data.info.tasks)
    evaluation = evaluate_bundle(bundle, data.info, "test", device)
    return RunOutcome(configuration=configuration.name, seed=seed, config=config,
                      evaluation=evaluation, history=fit.history, best_epoch=fit.state.best_epoch,
                      stop_reason=_stop_reason(fit.state, config.epochs, epoch_hook.out_of_time),
                      wall_seconds=time.perf_counter() - started,
                      n_parameters=sum(param.numel() for param in model.parameters()))


class _EpochHook:
    """``EpochLoop.fit``'s end-of-epoch hook: logs the epoch and, once the
    run's training time reaches the budget, ends the loop the way patience
    does (the loop re-checks its state after this hook). The budget is
    checked between epochs, so a run may overshoot it by one epoch."""

    def __init__(self, seconds: float | None, name: str, seed: int, epochs: int) -> None:
        self.seconds, self.name, self.seed, self.epochs = seconds, name, seed, epochs
        self.trained_seconds = 0.0
        self.out_of_time = False

    def __call__(self, result: EpochResult, state: LoopState) -> None:
        self.trained_seconds += result.train_seconds
        logger.info("%s seed %d: epoch %d/%d  train loss %.4f  valid mean AP %.4f  %.0f samples/s%s",
                    self.name, self.seed, result.epoch + 1, self.epochs, result.train_loss,
                    result.valid.mean_ap, result.train_samples / max(result.train_seconds, 1e-9),
                    "  (best)" if result.improved else "")
        if self.seconds is not None and self.trained_seconds >= self.seconds and not state.finished(self.epochs):
            self.out_of_time = True
            state.stopped_early = True


def _stop_reason(state: LoopState, epochs: int, out_of_time: bool) -> str:
    if out_of_time:
        return STOP_TIME
    return STOP_PATIENCE if state.stopped_early and state.epoch < epochs else STOP_EPOCHS
