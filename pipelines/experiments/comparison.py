"""The model comparison users choose a model from (benchmarks/compare.py).

Every configuration (an architecture and an optimizer step, optionally with
overrides) is trained for each seed on the same split with the same budget:
the same epochs, batch size, learning rate and early stopping on validation
mean AP, through the project's one training loop
(:class:`pipelines.training.engine.EpochLoop`, run in-process: the
comparison measures the models, not Ray's start-up). The best-validation
weights are then scored on the test split, once per run
(:func:`pipelines.training.evaluation.evaluate_bundle`).

Rows report mean +- std over seeds of the test mean PR-AUC (AP) and ROC-AUC,
Delta versus the single-task reference (Aoki et al. 2021, Tables 2-4: the
per-task relative change, averaged over tasks; per seed against the
reference's per-task mean over its seeds), the expert diversity score
(Sec. 4.4), training throughput and wall time.

MLflow layout: one parent run for the comparison (the table as CSV and
markdown artifacts), one child run per configuration (the row's numbers as
metrics, so the MLflow UI's run table shows the same table), and one
grandchild run per seed (its params, per-epoch curves, test metrics, per-task
table and diversity heatmap).
"""
from __future__ import annotations

import dataclasses
import io
import logging
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featurize.dataset import DatasetInfo, read_dataset_info
from featurize.errors import InputDataError
from featurize.reader import read_all
from models.config import ModelConfig
from models.factory import build_model
from models.metrics import delta_vs_reference
from models.steps import StepConfig, build_step
from pipelines.platform import tracking
from pipelines.serving.bundle import bundle_from_state
from pipelines.training.config import TrainConfig
from pipelines.training.engine import (
    Batch,
    EpochLoop,
    EpochResult,
    LoopState,
    epoch_seed,
)
from pipelines.training.evaluation import FinalEvaluation, evaluate_bundle

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "pcba-mmoeex-comparison"
ARCHITECTURES = ("single-task", "shared-bottom", "mmoe", "mmoeex")
OPTIMIZERS = ("plain", "maml-mtl")
#: The paper's Delta reference: independent single-task nets, plain step.
REFERENCE = "single-task/plain"
DEFAULT_CONFIGURATIONS = tuple(f"{arch}/{opt}" for arch in ARCHITECTURES for opt in OPTIMIZERS)
SPLITS = ("train", "valid", "test")
VALID_BATCH_SIZE = 4096
STOP_EPOCHS, STOP_PATIENCE, STOP_TIME = "epochs", "patience", "time budget"


# --------------------------------------------------------------- configurations

@dataclass(frozen=True)
class Configuration:
    """One row of the comparison: a name and the model and step it trains.

    The name is ``ARCH/OPTIMIZER`` with the overrides appended, e.g.
    ``mmoeex/maml-mtl:n_experts=8,inner_lr=0.1``.
    """

    name: str
    model: ModelConfig
    step: StepConfig


def parse_configuration(text: str, base_model: ModelConfig, base_step: StepConfig) -> Configuration:
    """``ARCH/OPTIMIZER[:field=value,...]`` -> a :class:`Configuration`.

    ``base_model``/``base_step`` hold the settings every row shares (expert
    widths, E, alpha, inner lr, positive weight...); overrides name a
    ModelConfig or StepConfig field (``expert_hidden=128x128`` for widths,
    ``true``/``false`` for flags, ``none`` for None).
    """
    head, _, overrides = text.strip().partition(":")
    architecture, _, optimizer = head.partition("/")
    if architecture not in ARCHITECTURES or optimizer not in OPTIMIZERS:
        raise ValueError(f"configuration {text!r} must be ARCH/OPTIMIZER[:field=value,...] with ARCH "
                         f"one of {ARCHITECTURES} and OPTIMIZER one of {OPTIMIZERS}")
    model_changes: dict[str, Any] = {"architecture": architecture}
    step_changes: dict[str, Any] = {"optimizer": optimizer}
    model_fields = {f.name: f for f in fields(ModelConfig)}
    step_fields = {f.name: f for f in fields(StepConfig)}
    for item in filter(None, (part.strip() for part in overrides.split(","))):
        key, equals, value = item.partition("=")
        key = key.strip()
        if not equals or key in ("architecture", "optimizer", "n_features", "n_tasks", "seed"):
            raise ValueError(f"configuration {text!r}: override {item!r} must be field=value for a "
                             "field other than architecture, optimizer, n_features, n_tasks, seed")
        if key in model_fields:
            model_changes[key] = _parse_value(key, value.strip(), model_fields[key].default)
        elif key in step_fields:
            step_changes[key] = _parse_value(key, value.strip(), step_fields[key].default)
        else:
            raise ValueError(f"configuration {text!r}: {key!r} is neither a ModelConfig field "
                             f"{sorted(model_fields)} nor a StepConfig field {sorted(step_fields)}")
    return Configuration(name=text.strip(), model=dataclasses.replace(base_model, **model_changes),
                         step=dataclasses.replace(base_step, **step_changes))


def _parse_value(key: str, text: str, default: Any) -> Any:
    """A field value from text, typed after the field's default."""
    if text.lower() == "none":
        return None
    if isinstance(default, bool):
        if text.lower() not in ("true", "false"):
            raise ValueError(f"{key} takes true or false, got {text!r}")
        return text.lower() == "true"
    if isinstance(default, tuple):
        return tuple(int(width) for width in text.split("x"))
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float) or default is None:
        return float(text)
    return text


def ordered_with_reference_first(configurations: Sequence[Configuration]) -> list[Configuration]:
    """The reference trains first, so every later row can log its Delta as
    soon as it finishes; otherwise the given order is kept."""
    names = [configuration.name for configuration in configurations]
    if len(set(names)) != len(names):
        raise ValueError(f"configurations must be distinct, got {names}")
    return sorted(configurations, key=lambda configuration: configuration.name != REFERENCE)


# ------------------------------------------------------------------------ budget

@dataclass(frozen=True)
class Budget:
    """What every row shares: optimizer settings, batch size, at most
    ``epochs`` (fewer with early stopping after ``patience`` epochs without a
    better validation mean AP, 0 = never), and optionally ``seconds`` of
    training per run (checked after each epoch; the same cap for every row)."""

    epochs: int = 5
    patience: int = 2
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.0
    seconds: float | None = None

    def train_config(self, info: DatasetInfo, configuration: Configuration, seed: int,
                     use_gpu: bool) -> TrainConfig:
        """The run's full record (also what its MLflow run logs as params)."""
        model = dataclasses.replace(configuration.model, seed=seed)
        return TrainConfig(data_dir=str(info.path), model=model, step=configuration.step, lr=self.lr,
                           weight_decay=self.weight_decay, batch_size=self.batch_size,
                           epochs=self.epochs, patience=self.patience, seed=seed,
                           use_gpu=use_gpu).for_dataset(info)


# -------------------------------------------------------------------------- data

@dataclass(frozen=True)
class ComparisonData:
    """The dataset with its train and valid splits in memory (packed, so a
    1024-bit PCBA row is 128 + K bytes). On a GPU the train split lives on
    the device and batches are cut there, so no epoch waits on the host."""

    info: DatasetInfo
    train_fp: torch.Tensor
    train_labels: torch.Tensor
    valid_fp: np.ndarray
    valid_labels: np.ndarray

    @classmethod
    def load(cls, data_dir: str | Path, device: torch.device | str = "cpu") -> ComparisonData:
        info = read_dataset_info(data_dir)
        if not info.has_labels:
            raise InputDataError(f"{info.path}: dataset has no task labels to compare models on")
        empty = [split for split in SPLITS if not info.split_counts.get(split)]
        if empty:
            raise InputDataError(f"{info.path}: the {' and '.join(empty)} split is empty or missing; "
                                 "the comparison needs train, valid and test (featurize with --split)")
        train, valid = (read_all(info, split=split, columns=()) for split in ("train", "valid"))
        return cls(info=info, train_fp=torch.from_numpy(train.fp).to(device),
                   train_labels=torch.from_numpy(train.labels).to(device),
                   valid_fp=valid.fp, valid_labels=valid.labels)

    def train_batches(self, batch_size: int, seed: int, epoch: int) -> Iterator[Batch]:
        """The epoch's shuffled batches (a permutation seeded by seed and epoch,
        the same for every configuration); the last partial batch is kept."""
        generator = torch.Generator().manual_seed(epoch_seed(seed, epoch, 0))
        order = torch.randperm(len(self.train_fp), generator=generator).to(self.train_fp.device)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            yield self.train_fp[rows], self.train_labels[rows]

    def valid_batches(self) -> Iterator[Batch]:
        for start in range(0, len(self.valid_fp), VALID_BATCH_SIZE):
            stop = start + VALID_BATCH_SIZE
            yield self.valid_fp[start:stop], self.valid_labels[start:stop]


# -------------------------------------------------------------------------- runs

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
    model = build_model(config.model).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
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


# ------------------------------------------------------------------------ summary

@dataclass(frozen=True)
class Summary:
    """One configuration's row: means and standard deviations over seeds
    (std 0 with one seed); Delta and diversity None where they do not apply."""

    configuration: str
    seeds: int
    ap_mean: float
    ap_std: float
    roc_auc_mean: float
    roc_auc_std: float
    delta_ap_mean: float | None
    delta_ap_std: float | None
    delta_roc_auc_mean: float | None
    delta_roc_auc_std: float | None
    diversity_mean: float | None
    diversity_std: float | None
    epochs_mean: float
    best_epoch_mean: float
    epoch_seconds: float
    wall_seconds: float
    samples_per_second: float
    n_parameters: int

    def metrics(self) -> dict[str, float]:
        """Numeric fields (MLflow metrics of the configuration's run)."""
        return {f.name: float(getattr(self, f.name)) for f in fields(self)
                if f.name != "configuration" and getattr(self, f.name) is not None}

    def display_row(self) -> dict[str, object]:
        """The printed / markdown row: mean +- std as text."""
        return {
            "configuration": self.configuration,
            "test PR-AUC": _pm(self.ap_mean, self.ap_std),
            "test ROC-AUC": _pm(self.roc_auc_mean, self.roc_auc_std),
            "Delta PR-AUC %": _pm(self.delta_ap_mean, self.delta_ap_std, digits=1),
            "Delta ROC-AUC %": _pm(self.delta_roc_auc_mean, self.delta_roc_auc_std, digits=1),
            "diversity": _pm(self.diversity_mean, self.diversity_std, digits=3),
            "epochs": f"{self.epochs_mean:.1f} (best {self.best_epoch_mean + 1:.1f})",
            "epoch s": f"{self.epoch_seconds:.1f}",
            "samples/s": f"{self.samples_per_second:,.0f}",
            "wall s": f"{self.wall_seconds:.0f}",
            "params": f"{self.n_parameters:,}",
        }


def reference_per_task(outcomes: Sequence[RunOutcome]) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-task test AP and ROC-AUC of the reference, averaged over its seeds
    (NaN where a task is unscored in any seed); None without reference runs."""
    runs = [outcome for outcome in outcomes if outcome.configuration == REFERENCE]
    if not runs:
        return None
    return (np.mean([run.evaluation.metrics.ap for run in runs], axis=0),
            np.mean([run.evaluation.metrics.roc_auc for run in runs], axis=0))


def summarize(runs: Sequence[RunOutcome], reference: tuple[np.ndarray, np.ndarray] | None) -> Summary:
    """The row of one configuration's seed runs; Delta is per seed against the
    reference's per-task means (:func:`reference_per_task`)."""
    if not runs or len({run.configuration for run in runs}) != 1:
        raise ValueError("summarize takes the runs of exactly one configuration")
    test = [run.evaluation.metrics for run in runs]
    ap_mean, ap_std = _mean_std([metrics.mean_ap for metrics in test])
    auc_mean, auc_std = _mean_std([metrics.mean_roc_auc for metrics in test])
    delta_ap = delta_auc = (None, None)
    if reference is not None:
        delta_ap = _mean_std([delta_vs_reference(metrics.ap, reference[0]) for metrics in test])
        delta_auc = _mean_std([delta_vs_reference(metrics.roc_auc, reference[1]) for metrics in test])
    scores = [run.evaluation.diversity for run in runs]
    diversity = _mean_std(scores) if all(score is not None for score in scores) else (None, None)
    return Summary(
        configuration=runs[0].configuration, seeds=len(runs),
        ap_mean=ap_mean, ap_std=ap_std, roc_auc_mean=auc_mean, roc_auc_std=auc_std,
        delta_ap_mean=delta_ap[0], delta_ap_std=delta_ap[1],
        delta_roc_auc_mean=delta_auc[0], delta_roc_auc_std=delta_auc[1],
        diversity_mean=diversity[0], diversity_std=diversity[1],
        epochs_mean=float(np.mean([len(run.history) for run in runs])),
        best_epoch_mean=float(np.mean([run.best_epoch for run in runs])),
        epoch_seconds=statistics.median(run.median_epoch_seconds for run in runs),
        wall_seconds=float(np.mean([run.wall_seconds for run in runs])),
        samples_per_second=float(np.mean([run.samples_per_second for run in runs])),
        n_parameters=runs[0].n_parameters)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = [float(value) for value in values]
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _pm(mean: float | None, std: float | None, digits: int = 4) -> str:
    if mean is None or not math.isfinite(mean):
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def table_csv(summaries: Sequence[Summary]) -> str:
    """The numeric table (one column per Summary field)."""
    import pandas as pd

    buffer = io.StringIO()
    pd.DataFrame([dataclasses.asdict(summary) for summary in summaries]).to_csv(buffer, index=False)
    return buffer.getvalue()


def table_markdown(summaries: Sequence[Summary]) -> str:
    """The printed table as a GitHub markdown table."""
    rows = [summary.display_row() for summary in summaries]
    if not rows:
        return ""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[column]) for column in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- tracking

class ComparisonTracker:
    """The MLflow runs of one comparison: parent, configuration children,
    seed grandchildren (module docstring). A configuration is logged when
    its seeds are done, so an interrupted comparison keeps every finished
    configuration (and its parent run is marked FAILED)."""

    def __init__(self, tracking_uri: str | None, experiment: str, run_name: str, info: DatasetInfo,
                 params: dict[str, Any]) -> None:
        self.info = info
        self.uri = tracking.resolve_tracking_uri(tracking_uri)
        self.client = tracking.client(self.uri)
        self.experiment_id = tracking.ensure_experiment(self.uri, experiment)
        self.commit = tracking.git_commit()
        self.parent_run_id = self._create(run_name, None)
        self.open_run_ids = [self.parent_run_id]
        tracking.log_params(self.uri, self.parent_run_id, params)
        tracking.set_tags(self.uri, self.parent_run_id, tracking.system_info())

    def _create(self, name: str, parent: str | None, tags: dict[str, str] | None = None) -> str:
        all_tags = {tracking.RUN_NAME_TAG: name, tracking.GIT_COMMIT_TAG: self.commit, **(tags or {})}
        if parent is not None:
            all_tags[tracking.PARENT_RUN_TAG] = parent
        return self.client.create_run(self.experiment_id, run_name=name, tags=all_tags).info.run_id

    def start_configuration(self, config: TrainConfig, name: str) -> str:
        """The configuration's run, with its params (a seed run's, less the seed)."""
        run_id = self._create(name, self.parent_run_id, {"comparison.configuration": name})
        self.open_run_ids.append(run_id)
        tracking.log_params(self.uri, run_id, {key: value for key, value in config.params().items()
                                               if key not in ("seed", "model.seed")})
        return run_id

    def log_seed(self, configuration_run_id: str, outcome: RunOutcome) -> str:
        """The seed's run: params, per-epoch curves, test metrics, per-task
        table, diversity heatmap."""
        run_id = self._create(f"{outcome.configuration} seed {outcome.seed}", configuration_run_id,
                              {"comparison.configuration": outcome.configuration,
                               "comparison.seed": str(outcome.seed)})
        tracking.log_params(self.uri, run_id, outcome.config.params())
        for epoch in outcome.history:
            tracking.log_metrics(self.uri, run_id, {
                "train_loss": epoch.train_loss, "valid_mean_ap": epoch.valid.mean_ap,
                "valid_mean_roc_auc": epoch.valid.mean_roc_auc, "train_seconds": epoch.train_seconds,
                "train_samples_per_s": epoch.train_samples / max(epoch.train_seconds, 1e-9)},
                step=epoch.epoch)
        test = outcome.evaluation.metrics
        tracking.log_metrics(self.uri, run_id, {
            "test_mean_ap": test.mean_ap, "test_mean_roc_auc": test.mean_roc_auc,
            "test_tasks_skipped": test.n_skipped, "best_epoch": outcome.best_epoch,
            "epochs_completed": len(outcome.history), "wall_seconds": outcome.wall_seconds,
            "samples_per_second": outcome.samples_per_second,
            "median_epoch_seconds": outcome.median_epoch_seconds,
            "n_parameters": outcome.n_parameters,
            **({} if outcome.evaluation.diversity is None
               else {"diversity_score": outcome.evaluation.diversity})})
        tracking.set_tags(self.uri, run_id, {"comparison.stop_reason": outcome.stop_reason})
        tracking.log_table_csv(self.uri, run_id, [
            {"task": task, "ap": ap, "roc_auc": auc}
            for task, ap, auc in zip(self.info.tasks, test.ap, test.roc_auc)], "test/per_task_metrics.csv")
        matrix = outcome.evaluation.distance_matrix
        if matrix is not None:
            tracking.log_json(self.uri, run_id, np.round(matrix, 6).tolist(), "experts/distance_matrix.json")
            tracking.log_figure(self.uri, run_id, tracking.diversity_heatmap(
                matrix, float(outcome.evaluation.diversity), outcome.configuration),
                "experts/diversity_heatmap.png")
        tracking.finish_run(self.uri, run_id)
        return run_id

    def finish_configuration(self, run_id: str, summary: Summary) -> None:
        tracking.log_metrics(self.uri, run_id, summary.metrics())
        tracking.finish_run(self.uri, run_id)
        self.open_run_ids.remove(run_id)

    def finish(self, summaries: Sequence[Summary], text_table: str) -> None:
        """The table on the parent run (CSV, markdown, plain text), then close it."""
        self.client.log_text(self.parent_run_id, table_csv(summaries), "comparison/table.csv")
        self.client.log_text(self.parent_run_id, table_markdown(summaries), "comparison/table.md")
        self.client.log_text(self.parent_run_id, text_table + "\n", "comparison/table.txt")
        tracking.finish_run(self.uri, self.parent_run_id)
        self.open_run_ids.remove(self.parent_run_id)

    def fail(self) -> None:
        """Mark the runs still open FAILED (a run that raised)."""
        for run_id in self.open_run_ids:
            tracking.finish_run(self.uri, run_id, status="FAILED")
        self.open_run_ids.clear()


# ------------------------------------------------------------------- comparison

@dataclass(frozen=True)
class ComparisonResult:
    """The rows, every run, and where they were tracked (None: not tracked)."""

    summaries: list[Summary]
    outcomes: list[RunOutcome]
    parent_run_id: str | None
    tracking_uri: str | None


def comparison_params(data: DatasetInfo, configurations: Sequence[Configuration], seeds: Sequence[int],
                      budget: Budget, device: str) -> dict[str, Any]:
    """The parent run's params: the budget, the rows, the seeds, the data."""
    return {**{f"budget.{key}": value for key, value in dataclasses.asdict(budget).items()},
            "configurations": [configuration.name for configuration in configurations],
            "seeds": list(seeds), "device": device, "reference": REFERENCE,
            **tracking.dataset_identity(data)}


def default_run_name(info: DatasetInfo) -> str:
    return f"compare-{Path(info.path).name}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_comparison(data_dir: str | Path, configurations: Sequence[Configuration], seeds: Sequence[int],
                   budget: Budget, *, device: str = "cpu",
                   tracker: Callable[[DatasetInfo, list[Configuration]], ComparisonTracker] | None = None,
                   render: Callable[[Sequence[Summary]], str] = table_markdown,
                   progress: bool = True) -> ComparisonResult:
    """Train every configuration for every seed (same data, split and
    budget) and score each best-validation model on the test split once.

    ``tracker(info, configurations)`` opens the MLflow runs (see
    :func:`mlflow_tracker`); each run is logged as soon as it finishes.
    Without one nothing is tracked (a machine with no MLflow: save the
    outcomes and log them later with :func:`log_outcomes`). ``render`` turns
    the summaries into the text table logged on the parent run.
    """
    from tqdm import tqdm

    if not seeds:
        raise ValueError("at least one seed is needed")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device")
    configurations = ordered_with_reference_first(configurations)
    data = ComparisonData.load(data_dir, device)
    active = tracker(data.info, configurations) if tracker is not None else None
    logger.info("comparing %d configurations x %d seeds on %s (%s)%s", len(configurations), len(seeds),
                data.info.path, device, "" if active is None else
                f"; MLflow parent run {active.parent_run_id} in {active.uri}")
    outcomes: list[RunOutcome] = []
    summaries: list[Summary] = []
    with tqdm(total=len(configurations) * len(seeds), unit="run", desc="compare",
              disable=not progress) as bar:
        for configuration in configurations:
            runs = []
            for seed in seeds:
                bar.set_postfix_str(f"{configuration.name} seed {seed}")
                try:
                    runs.append(train_and_test(data, configuration, seed, budget, device))
                except BaseException:
                    if active is not None:
                        active.fail()
                    raise
                bar.update()
            summaries.append(_record(active, configuration.name, runs, outcomes))
            outcomes.extend(runs)
    if active is not None:
        active.finish(summaries, render(summaries))
    return ComparisonResult(summaries=summaries, outcomes=outcomes,
                            parent_run_id=None if active is None else active.parent_run_id,
                            tracking_uri=None if active is None else active.uri)


def log_outcomes(outcomes: Sequence[RunOutcome], configurations: Sequence[Configuration],
                 tracker: ComparisonTracker,
                 render: Callable[[Sequence[Summary]], str] = table_markdown) -> list[Summary]:
    """Log finished runs (saved by an untracked :func:`run_comparison`) into
    ``tracker``'s MLflow runs, exactly as a tracked comparison logs them."""
    configurations = ordered_with_reference_first(configurations)
    summaries: list[Summary] = []
    done: list[RunOutcome] = []
    for configuration in configurations:
        runs = [outcome for outcome in outcomes if outcome.configuration == configuration.name]
        if not runs:
            raise ValueError(f"no saved runs of configuration {configuration.name!r}")
        summaries.append(_record(tracker, configuration.name, runs, done))
        done.extend(runs)
    tracker.finish(summaries, render(summaries))
    return summaries


def _record(tracker: ComparisonTracker | None, name: str, runs: list[RunOutcome],
            earlier: Sequence[RunOutcome]) -> Summary:
    """A configuration's row (Delta against the reference among ``earlier``
    runs or these), logged as a child run with its seeds when tracked."""
    summary = summarize(runs, reference_per_task([*earlier, *runs]))
    if tracker is not None:
        run_id = tracker.start_configuration(runs[0].config, name)
        for outcome in runs:
            tracker.log_seed(run_id, outcome)
        tracker.finish_configuration(run_id, summary)
    return summary


def mlflow_tracker(tracking_uri: str | None, experiment: str = DEFAULT_EXPERIMENT,
                   run_name: str | None = None, *, seeds: Sequence[int], budget: Budget,
                   device: str) -> Callable[[DatasetInfo, list[Configuration]], ComparisonTracker]:
    """The ``tracker`` argument of :func:`run_comparison` for an MLflow store."""

    def open_tracker(info: DatasetInfo, configurations: list[Configuration]) -> ComparisonTracker:
        return ComparisonTracker(tracking_uri, experiment, run_name or default_run_name(info), info,
                                 comparison_params(info, configurations, seeds, budget, device))

    return open_tracker
