"""One (configuration, seed) run: train under the budget, keep the best
validation epoch, score it on the test split once."""
from __future__ import annotations

import logging
import time
from typing import Any

import torch

from models.factory import build_model
from models.steps import build_step
from pipelines.experiments.comparison.checkpoints import RunCheckpoints, RunProgress
from pipelines.experiments.comparison.configurations import Budget, Configuration
from pipelines.experiments.comparison.data import ComparisonData
from pipelines.experiments.comparison.outcome import RunOutcome
from pipelines.platform import tracking
from pipelines.serving.bundle import bundle_from_state
from pipelines.training.config import TrainConfig, optimizer_for
from pipelines.training.engine import (
    EpochLoop,
    EpochResult,
    LoopState,
    cpu_state_dict,
)
from pipelines.training.evaluation import evaluate_bundle

logger = logging.getLogger(__name__)

STOP_EPOCHS, STOP_PATIENCE, STOP_TIME = "epochs", "patience", "time budget"


def train_and_test(data: ComparisonData, configuration: Configuration, seed: int, budget: Budget,
                   device: torch.device | str = "cpu",
                   checkpoints: RunCheckpoints | None = None) -> RunOutcome:
    """Train one configuration with one seed under ``budget``, keep the best
    validation epoch's weights, score them on the test split (the only time
    the run touches it).

    With ``checkpoints`` the run saves itself after every epoch and starts
    from what an earlier process left: a finished run is reused as it is,
    an unfinished one resumes at its next epoch (or, killed with its budget
    already spent, is scored as it stands), and one that its time budget
    stopped continues when ``budget.seconds`` is now larger.
    """
    device = torch.device(device)
    started = time.perf_counter()
    config = budget.train_config(data.info, configuration, seed, use_gpu=device.type == "cuda")
    config = config.with_positive_weights(data.train_labels.cpu().numpy())
    model = build_model(config.model).to(device)
    optimizer = optimizer_for(model, config)
    identity = _identity(config, data)
    saved = (checkpoints.load(configuration.name, seed, identity, TrainConfig.default_params())
             if checkpoints is not None else None)
    if saved is not None and saved.outcome is not None and not _continues(saved.outcome, budget):
        logger.info("%s seed %d: finished in an earlier process (%s), reused", configuration.name, seed,
                    checkpoints.path(configuration.name, seed))
        return saved.outcome
    recorder = _RunRecorder(budget.seconds, configuration.name, seed, config.epochs, model, optimizer,
                            identity, saved, checkpoints, started)
    state = None
    if saved is not None:
        model.load_state_dict(saved.model_state)
        optimizer.load_state_dict(saved.optimizer_state)
        state = saved.loop()
        # A time-capped run goes on only under a budget it has not spent; a
        # killed one whose budget is spent is scored as it stands.
        state.stopped_early = recorder.out_of_time
        logger.info("%s seed %d: %s after epoch %d (%s)", configuration.name, seed,
                    "time budget spent, scoring its best epoch" if state.stopped_early else "resuming",
                    state.epoch, checkpoints.path(configuration.name, seed))
    loop = EpochLoop(model, build_step(config.step), optimizer, data.info.spec, device, seed=seed)
    fit = loop.fit(lambda epoch: data.train_batches(config.batch_size, seed, epoch),
                   data.valid_batches, epochs=config.epochs, patience=config.patience, state=state,
                   on_epoch_end=recorder)
    if recorder.progress.best_state_dict is None:
        raise RuntimeError(f"{configuration.name} seed {seed}: no epoch reached a finite validation "
                           "mean AP (does the valid split have tasks with both classes?)")
    bundle = bundle_from_state(config.model, recorder.progress.best_state_dict, data.info.spec,
                               data.info.tasks)
    evaluation = evaluate_bundle(bundle, data.info, "test", device)
    outcome = RunOutcome(configuration=configuration.name, seed=seed, config=config,
                         evaluation=evaluation, history=recorder.progress.history,
                         best_epoch=fit.state.best_epoch,
                         stop_reason=_stop_reason(fit.state, config.epochs, recorder.out_of_time),
                         wall_seconds=recorder.wall_seconds(),
                         n_parameters=sum(param.numel() for param in model.parameters()))
    if checkpoints is not None:
        recorder.progress.outcome = outcome
        recorder.progress.wall_seconds = outcome.wall_seconds
        checkpoints.save(configuration.name, seed, recorder.progress)
    return outcome


def _identity(config: TrainConfig, data: ComparisonData) -> dict[str, Any]:
    """What a checkpoint must agree with to be resumed: every training
    setting and the data's metadata and row counts (not their paths, so a
    moved dataset still resumes)."""
    identity = {**config.params(), **tracking.dataset_identity(data.info)}
    for where in ("data_dir", "data.path"):
        identity.pop(where, None)
    return identity


def _continues(outcome: RunOutcome, budget: Budget) -> bool:
    """A finished run trains on only if its time budget stopped it and the
    budget is now larger."""
    return outcome.stop_reason == STOP_TIME and (budget.seconds is None
                                                 or budget.seconds > outcome.train_seconds)


class _RunRecorder:
    """``EpochLoop.fit``'s end-of-epoch hook: logs the epoch, keeps the full
    history and the best epoch's weights (on the CPU), saves a checkpoint
    when asked to, and once the run's training time reaches the budget ends
    the loop the way patience does (the loop re-checks its state after this
    hook). The budget is checked between epochs, so a run may overshoot it
    by one epoch.

    Wall seconds add up over processes: each checkpoint holds those of the
    earlier processes plus this one's so far, so a killed-then-resumed run
    reports what it cost up to its last checkpoint and after, not only its
    last process."""

    def __init__(self, seconds: float | None, name: str, seed: int, epochs: int, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, identity: dict[str, Any], saved: RunProgress | None,
                 checkpoints: RunCheckpoints | None, started: float) -> None:
        self.seconds, self.name, self.seed, self.epochs = seconds, name, seed, epochs
        self.model, self.optimizer, self.checkpoints = model, optimizer, checkpoints
        self.progress = saved or RunProgress(identity=identity, model_state={}, optimizer_state={},
                                             loop_state={})
        self.progress.outcome = None
        self.out_of_time = saved is not None and self._spent()
        # ``started``: when this process began the run (building the model and
        # loading its checkpoint count too).
        self._started, self._earlier_wall_seconds = started, self.progress.wall_seconds

    def wall_seconds(self) -> float:
        """The run's wall seconds so far, earlier processes included."""
        return self._earlier_wall_seconds + time.perf_counter() - self._started

    def _spent(self) -> bool:
        """Whether the run's training time has reached its budget."""
        return self.seconds is not None and self.progress.trained_seconds >= self.seconds

    def __call__(self, result: EpochResult, state: LoopState) -> None:
        progress = self.progress
        progress.history.append(result)
        if result.improved:
            progress.best_state_dict = cpu_state_dict(self.model)
        logger.info("%s seed %d: epoch %d/%d  train loss %.4f  valid mean AP %.4f  %.0f samples/s%s",
                    self.name, self.seed, result.epoch + 1, self.epochs, result.train_loss,
                    result.valid.mean_ap, result.train_samples / max(result.train_seconds, 1e-9),
                    "  (best)" if result.improved else "")
        if self._spent() and not state.finished(self.epochs):
            self.out_of_time = True
            state.stopped_early = True
        if self.checkpoints is not None:
            progress.model_state = self.model.state_dict()
            progress.optimizer_state = self.optimizer.state_dict()
            progress.loop_state = state.to_dict()
            progress.wall_seconds = self.wall_seconds()
            self.checkpoints.save(self.name, self.seed, progress)


def _stop_reason(state: LoopState, epochs: int, out_of_time: bool) -> str:
    if out_of_time:
        return STOP_TIME
    return STOP_PATIENCE if state.stopped_early and state.epoch < epochs else STOP_EPOCHS
