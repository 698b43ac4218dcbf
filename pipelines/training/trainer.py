"""Ray Train wiring of a training run, and the whole run from data to MLflow.

:func:`build_trainer` makes the ``TorchTrainer`` (datasets, scaling, failure
and checkpoint policy); :func:`run_training` is the job: open or resume the
MLflow run, fit, calibrate the best checkpoint's probabilities on the
validation split, evaluate it on the test split, log everything and the
SMILES-in pyfunc, optionally register it.

An ensemble (``TrainConfig.ensemble`` = N) fits its members one after
another, each a run of its own (a Ray Train run and a nested MLflow run with
its curves and test metrics); a finished member's best weights are kept
under the run's storage folder, so the same command after a kill skips the
finished members and resumes the one in progress from its checkpoint. The
stacked members (models/ensemble.py) are then calibrated, evaluated, logged
and registered as one model.

Tuning reuses both: a Tune function trainable calls :func:`run_training`
with ``callbacks=[ray.tune.integration.ray_train.TuneReportCallback()]`` and a
per-trial ``run_name``/``mlflow_parent_run_id`` (Train V2 runs the
TorchTrainer inside the trainable), so there is one training loop.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featurize.dataset import DatasetInfo, read_dataset_info
from featurize.errors import InputDataError
from featurize.reader import read_all
from models.config import ModelConfig
from models.ensemble import Ensemble
from models.factory import build_model
from models.metrics import SELECTION_METRIC, TaskMetrics
from models.networks.base import MultiTaskModel
from pipelines.platform import tracking
from pipelines.training.callbacks import MlflowEpochLogger
from pipelines.training.config import TrainConfig
from pipelines.training.evaluation import CalibrationReport
from pipelines.training.run_end import (
    NetworkFit,
    calibrate_and_test,
    log_member_table,
    log_run_end,
    run_summary,
    test_means,
)
from pipelines.training.worker import TRAIN_SPLIT, VALID_SPLIT, restore_checkpoint, train_loop_per_worker

logger = logging.getLogger(__name__)

#: CPUs a Ray Data read task asks for: reading Parquet is I/O, and the
#: training workers hold the cores.
DATA_TASK_CPUS = 0.25


@dataclass(frozen=True)
class TrainingResult:
    """What a finished run produced and where it is: one :class:`NetworkFit`
    per network (N for an ensemble). ``test`` ranks the model's raw
    probabilities (an ensemble's mean); ``test_calibration`` compares raw
    and calibrated ones; ``member_tests`` holds each member's own test
    means (:func:`test_means`; empty for one network)."""

    run_name: str
    mlflow_run_id: str
    resumed: bool
    networks: tuple[NetworkFit, ...]
    test: TaskMetrics | None
    diversity: float | None
    model_uri: str
    registered_version: int | None = None
    test_calibration: CalibrationReport | None = None
    member_tests: tuple[dict[str, float], ...] = ()

    @property
    def epochs_completed(self) -> int:
        """Epochs trained, over all networks."""
        return sum(network.epochs_completed for network in self.networks)


def default_run_name() -> str:
    return f"train-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_config(config: TrainConfig) -> tuple[TrainConfig, DatasetInfo]:
    """Resolve what a run must pin down before it starts: the dataset (and
    the model's input/output widths from it), the run name, absolute storage
    and tracking locations (Ray actors have other working directories)."""
    info = read_dataset_info(config.data_dir)
    if not info.has_labels:
        raise InputDataError(f"{info.path}: dataset has no task labels to train on")
    empty = [split for split in (TRAIN_SPLIT, VALID_SPLIT) if not info.split_counts.get(split)]
    if empty:
        raise InputDataError(f"{info.path}: the {' and '.join(empty)} split is empty or missing; "
                             "featurize with --split random or --split scaffold")
    config = config.for_dataset(info)
    if config.step.pos_weight_cap is not None:
        config = config.with_positive_weights(read_all(info, split=TRAIN_SPLIT, columns=()).labels)
    return dataclasses.replace(
        config,
        run_name=config.run_name or default_run_name(),
        storage_path=str(Path(config.storage_path).resolve()),
        tracking_uri=tracking.resolve_tracking_uri(config.tracking_uri),
    ), info


def worker_resources(config: TrainConfig, cluster_cpus: float) -> dict[str, float]:
    """Per-worker resources: as configured, else an equal share of the
    cluster's CPUs that leaves one CPU (or a worker's share, on a small
    machine) for the Ray Data readers, plus one GPU each with ``use_gpu``."""
    if config.resources_per_worker:
        return dict(config.resources_per_worker)
    workers = config.num_workers
    cpus = (math.floor((cluster_cpus - 1) / workers) if cluster_cpus - 1 >= workers
            else cluster_cpus / (workers + 1))
    resources = {"CPU": float(cpus)}
    if config.use_gpu:
        resources["GPU"] = 1.0
    return resources


def build_train_dataset(info: DatasetInfo) -> Any:
    """The train split as a Ray Data dataset, read once into Ray's object
    store (only the fp and label columns; the split filter is pushed into
    the Parquet scan).

    Why materialize: a streaming dataset re-runs its read tasks every epoch,
    which measured 20-30 s of fixed cost per epoch on a 2-core machine (a
    12k-row epoch that the plain loop reads in 0.1 s); iterating the stored
    blocks costs about 0.1 s. Memory stays bounded: past its capacity the
    object store spills blocks to local disk, and workers still stream their
    shard batch by batch.
    """
    import ray.data
    from ray.data.expressions import col

    dataset = (ray.data.read_parquet([str(path) for path in info.shards],
                                     columns=["fp", *info.tasks, "split"], num_cpus=DATA_TASK_CPUS)
               .filter(expr=col("split") == TRAIN_SPLIT, num_cpus=DATA_TASK_CPUS))
    dataset.context.enable_progress_bars = False
    dataset.context.enable_operator_progress_bars = False
    # Blocks in file order, whatever order the read tasks finish in: the
    # same rows reach the same worker in the same order every run.
    dataset.context.execution_options.preserve_order = True
    return dataset.materialize()


def build_trainer(config: TrainConfig, info: DatasetInfo | None = None, *,
                  callbacks: Sequence[Any] = ()) -> Any:
    """The ``TorchTrainer`` of a prepared config (see :func:`prepare_config`;
    ``config.run_name`` and ``config.storage_path`` name its Ray storage, and
    a trainer with the same name and storage resumes from its checkpoints).

    The train split is sharded across workers by Ray Data
    (``streaming_split`` of the materialized split: equal rows each, in a
    fixed order for reproducibility). The valid split is not sharded: every worker streams
    all of it from the Parquet files with featurize's reader (no Ray Data
    pipeline launch per epoch), so all workers compute the same validation
    metrics and take the same early-stopping decision.
    """
    import ray
    from ray.data import ExecutionOptions
    from ray.train import (
        CheckpointConfig,
        DataConfig,
        FailureConfig,
        LoggingConfig,
        RunConfig,
        ScalingConfig,
    )
    from ray.train.torch import TorchTrainer

    if config.run_name is None:
        raise ValueError("build_trainer needs a prepared config (run_name is None); "
                         "call prepare_config first")
    info = info or read_dataset_info(config.data_dir)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": config.to_dict()},
        scaling_config=ScalingConfig(
            num_workers=config.num_workers, use_gpu=config.use_gpu,
            resources_per_worker=worker_resources(config, ray.cluster_resources().get("CPU", 1.0))),
        run_config=RunConfig(
            name=config.run_name,
            storage_path=config.storage_path,
            failure_config=FailureConfig(max_failures=config.max_failures),
            # Keeps the best checkpoint by validation mean AP, and the latest
            # (Ray never deletes the latest), which resumption starts from.
            checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=SELECTION_METRIC,
                                               checkpoint_score_order="max"),
            callbacks=list(callbacks),
            # Ray Train's per-report INFO lines repeat every metric; the
            # workers log one line per epoch instead.
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
        datasets={TRAIN_SPLIT: build_train_dataset(info)},
        # preserve_order: the same rows reach the same worker in the same
        # order every run (reproducible for a seed and worker count).
        dataset_config=DataConfig(execution_options=ExecutionOptions(preserve_order=True)),
    )


def run_training(config: TrainConfig, *, callbacks: Sequence[Any] = (),
                 register_name: str | None = None, alias: str | None = None) -> TrainingResult:
    """Train on Ray Train (Ray must be initialised, or a local instance is
    started), track in MLflow, log the best model (or the ensemble of the
    members' best) as a pyfunc and optionally register it as
    ``register_name`` (with ``alias``)."""
    from pipelines.platform.ray_setup import connect_ray
    from pipelines.serving.registry import log_scoring_model, register_model

    connect_ray(os.environ.get("RAY_ADDRESS"))
    config, info = prepare_config(config)
    uri = config.tracking_uri
    run_id, resumed = tracking.start_run(uri, config.experiment_name, config.run_name,
                                         parent_run_id=config.mlflow_parent_run_id)
    logger.info("%s MLflow run %s (%s), Ray run %s in %s", "resuming" if resumed else "started",
                run_id, uri, config.run_name, config.storage_path)
    try:
        tracking.log_params(uri, run_id, {**config.params(), **tracking.dataset_identity(info),
                                          "fingerprint_spec": info.spec.to_json()})
        tracking.set_tags(uri, run_id, tracking.system_info())
        if config.ensemble == 1:
            network, model = _fit_network(config, info, run_id, callbacks)
            networks, served, member_tests = (network,), model, ()
        else:
            fitted = [_train_member(config, info, run_id, index, callbacks)
                      for index in range(config.ensemble)]
            networks = tuple(network for network, _, _ in fitted)
            served = Ensemble([model for _, model, _ in fitted])
            member_tests = tuple(test for _, _, test in fitted if test is not None)
        bundle, evaluation = calibrate_and_test(served, info)
        log_run_end(uri, run_id, config, info, run_summary(networks), evaluation)
        if member_tests:
            log_member_table(uri, run_id, networks, member_tests, evaluation)
        model_uri = log_scoring_model(uri, run_id, bundle)
    except BaseException:
        tracking.finish_run(uri, run_id, status="FAILED")
        raise
    tracking.finish_run(uri, run_id)
    version = register_model(run_id, register_name, alias=alias, tracking_uri=uri) \
        if register_name else None
    return TrainingResult(
        run_name=config.run_name, mlflow_run_id=run_id, resumed=resumed, networks=networks,
        test=None if evaluation is None else evaluation.metrics,
        diversity=None if evaluation is None else evaluation.diversity,
        model_uri=model_uri, registered_version=version,
        test_calibration=None if evaluation is None else evaluation.calibration,
        member_tests=member_tests)


def _fit_network(config: TrainConfig, info: DatasetInfo, run_id: str,
                 callbacks: Sequence[Any]) -> tuple[NetworkFit, MultiTaskModel]:
    """Fit one network on Ray Train (resuming its checkpoints), its epochs
    logged to MLflow run ``run_id``: how it went, and its best epoch's model."""
    trainer = build_trainer(config, info, callbacks=[MlflowEpochLogger(config.tracking_uri, run_id),
                                                     *callbacks])
    fit = trainer.fit()
    best, latest, last_metrics = _checkpoints(fit)
    model = build_model(config.model)
    restore_checkpoint(best, model, None)
    network = NetworkFit(
        run_name=str(config.run_name), mlflow_run_id=run_id, storage_dir=fit.path,
        best_checkpoint=best.path, latest_checkpoint=latest.path,
        epochs_completed=int(last_metrics["epoch"]) + 1, best_epoch=int(last_metrics["best_epoch"]),
        best_valid_mean_ap=float(last_metrics["best_valid_mean_ap"]),
        stopped_early=bool(last_metrics["stopped_early"]),
        samples_per_s_per_worker=float(last_metrics["train_samples_per_s"]))
    return network, model.eval()


def _train_member(config: TrainConfig, info: DatasetInfo, parent_run_id: str, index: int,
                  callbacks: Sequence[Any]) -> tuple[NetworkFit, MultiTaskModel, dict[str, float] | None]:
    """Ensemble member ``index``: reused when an earlier attempt finished it
    (its weights in the run's storage folder), else fitted (resuming its Ray
    Train checkpoints) in a nested MLflow run that also gets its own
    calibration and test metrics."""
    member = config.member(index, parent_run_id)
    kept = MemberStore(config, index)
    if kept.finished():
        logger.info("ensemble member %d (%s): finished by an earlier attempt, reused", index,
                    member.run_name)
        return kept.load(member.model)
    uri = config.tracking_uri
    run_id, _ = tracking.start_run(uri, config.experiment_name, str(member.run_name),
                                   parent_run_id=parent_run_id)
    try:
        tracking.log_params(uri, run_id, {**member.params(), **tracking.dataset_identity(info)})
        network, model = _fit_network(member, info, run_id, callbacks)
        _, evaluation = calibrate_and_test(model, info, with_domain=False)
        log_run_end(uri, run_id, member, info, network.summary(), evaluation)
    except BaseException:
        tracking.finish_run(uri, run_id, status="FAILED")
        raise
    tracking.finish_run(uri, run_id)
    test = None if evaluation is None else test_means(evaluation)
    kept.save(network, model, test)
    return network, model, test


class MemberStore:
    """A finished ensemble member's best weights and run summary, in the
    ensemble's Ray storage folder (``<storage>/<run name>/members/``):
    written once the member is done, so a rerun skips it."""

    def __init__(self, config: TrainConfig, index: int) -> None:
        folder = Path(config.storage_path) / str(config.run_name) / "members"
        self.weights = folder / f"member-{index}.safetensors"
        self.record = folder / f"member-{index}.json"

    def finished(self) -> bool:
        return self.record.is_file() and self.weights.is_file()

    def save(self, network: NetworkFit, model: MultiTaskModel, test: dict[str, float] | None) -> None:
        from safetensors.torch import save_model

        self.weights.parent.mkdir(parents=True, exist_ok=True)
        save_model(model, str(self.weights))
        record = {"network": dataclasses.asdict(network), "test": test}
        partial = self.record.with_suffix(".partial")
        partial.write_text(json.dumps(record))
        partial.replace(self.record)  # last: its presence means the member is done

    def load(self, config: ModelConfig) -> tuple[NetworkFit, MultiTaskModel, dict[str, float] | None]:
        from safetensors.torch import load_model

        record = json.loads(self.record.read_text())
        model = build_model(config)
        load_model(model, str(self.weights))
        return NetworkFit(**{**record["network"], "reused": True}), model.eval(), record["test"]


def _checkpoints(fit: Any) -> tuple[Any, Any, dict[str, Any]]:
    """(best checkpoint, latest checkpoint, latest metrics) of a finished fit;
    the best is the loop's best epoch (ties in the score resolved as the loop
    resolved them)."""
    if fit.checkpoint is None or not fit.metrics:
        raise RuntimeError(f"training run at {fit.path} reported no checkpoint")
    best_epoch = fit.metrics["best_epoch"]
    by_epoch = {metrics["epoch"]: checkpoint for checkpoint, metrics in fit.best_checkpoints}
    best = by_epoch.get(best_epoch) or fit.get_best_checkpoint(SELECTION_METRIC, "max") or fit.checkpoint
    return best, fit.checkpoint, fit.metrics
