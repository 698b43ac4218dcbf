"""A Ray Tune sweep over the training job: the Tuner wiring, the MLflow parent
run, best-trial selection and registration.

Layout on disk (``storage/name``): Tune's experiment state (what
``--resume`` restores), ``sweep.json`` (the sweep's settings and its MLflow
parent run, read back on resume) and ``train_runs/`` (each trial's Ray Train
run and checkpoints, named ``<sweep>-<trial id>``).

MLflow: one parent run named after the sweep; every trial is a child run
(the training job's own run, nested by ``TrainConfig.mlflow_parent_run_id``),
so the MLflow UI compares trials side by side. The parent holds the sweep's
settings and search space, the trials table (CSV), the best trial's values
and scores, and a scatter plot of the step / alpha / E / inner lr against valid AP.
Trials stopped by ASHA end as KILLED runs tagged ``pcba.tune.status``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.metrics import METRICS, metric_key
from pipelines.errors import UserError
from pipelines.experiments.sweep_report import trial_rows, trials_figure
from pipelines.experiments.sweep_trial import (
    EPOCHS_COMPLETED,
    TrialSettings,
    make_trainable,
    trial_run_name,
)
from pipelines.platform import tracking
from pipelines.training.config import TrainConfig
from pipelines.training.domain_cache import training_domain
from pipelines.training.trainer import prepare_config
from tuning.schedulers import (
    METRIC,
    MODE,
    SchedulerConfig,
    build_scheduler,
    build_searcher,
)
from tuning.search_space import SearchSpace, tune_param_space
from tuning.selection import (
    EARLY_STOPPED,
    ERROR,
    FINISHED,
    NOT_RUN,
    Champion,
    PromotionDecision,
    TrialOutcome,
    best_trial,
    data_identity,
    decide_promotion,
)

logger = logging.getLogger(__name__)

SETTINGS_FILE = "sweep.json"
TRAIN_RUNS_DIR = "train_runs"
STATUS_TAG = "pcba.tune.status"
SWEEP_TAG = "pcba.tune.sweep"
#: CPUs left to the trials' Ray Data readers (see plan_trials).
DATA_CPUS = 1.0
#: Memory a trial's driver actor reserves (it holds no model; see make_trainable).
TRIAL_DRIVER_MEMORY = 256 * 1024**2


@dataclass(frozen=True)
class SweepConfig:
    """One sweep. ``base`` is the training config every trial starts from
    (data, epochs, batch size, architecture, optimizer step...); the
    searched values replace its alpha, E, inner lr, lr and expert width.

    cpus_per_trial / gpus_per_trial: what one trial's Train workers ask for
    in all (split evenly over ``base.num_workers``); None = an equal share of
    the cluster for ``max_concurrent`` trials, less what Ray Data's readers
    need. max_concurrent None = as many as the cluster's CPUs (or GPUs)
    allow at one CPU (or the asked GPUs) per trial.
    """

    base: TrainConfig
    name: str
    storage: str = "runs/tune"
    num_samples: int = 16
    max_concurrent: int | None = None
    searcher: str = "random"
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    space: SearchSpace = field(default_factory=SearchSpace.from_mapping)
    cpus_per_trial: float | None = None
    gpus_per_trial: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {self.max_concurrent}")
        if self.scheduler.max_epochs != self.base.epochs:
            raise ValueError(f"the scheduler's budget ({self.scheduler.max_epochs} epochs) must be "
                             f"the trials' epochs ({self.base.epochs})")
        self.step_bases()  # every step the space draws takes the base's step settings

    def step_bases(self) -> list[TrainConfig]:
        """The base config once per optimizer step the space may draw, with
        that step: the settings trials of each step share."""
        bases = []
        for optimizer in self.space.steps(self.base.step):
            try:
                step = dataclasses.replace(self.base.step, optimizer=optimizer)
            except ValueError as error:
                raise ValueError(f"the search space draws the {optimizer} step, which does not take "
                                 f"these settings ({error}); fix the step with --optimizer") from None
            bases.append(dataclasses.replace(self.base, step=step))
        return bases

    @property
    def experiment_dir(self) -> Path:
        return Path(self.storage).resolve() / self.name

    def to_dict(self) -> dict[str, Any]:
        return {"base": self.base.to_dict(), "name": self.name, "storage": self.storage,
                "num_samples": self.num_samples, "max_concurrent": self.max_concurrent,
                "searcher": self.searcher, "scheduler": dataclasses.asdict(self.scheduler),
                "space": self.space.to_mapping(), "cpus_per_trial": self.cpus_per_trial,
                "gpus_per_trial": self.gpus_per_trial, "seed": self.seed}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SweepConfig:
        return cls(**{**values, "base": TrainConfig.from_dict(values["base"]),
                      "scheduler": SchedulerConfig(**values["scheduler"]),
                      "space": SearchSpace.from_saved(values["space"])})


@dataclass(frozen=True)
class TrialPlan:
    """Resources of one trial and how many run at once."""

    max_concurrent: int
    resources_per_worker: dict[str, float]


def plan_trials(config: SweepConfig, cluster_cpus: float, cluster_gpus: float) -> TrialPlan:
    """Per-worker resources and concurrency. The trials' Ray Data pipelines
    need CPUs the Train workers do not hold: the file-listing task of a
    Parquet read asks for a whole CPU (the read tasks for
    ``DATA_TASK_CPUS``), so by default one CPU (half of a tiny cluster) is
    left to them and the rest is split between the concurrent trials; with
    every CPU given to workers, the readers wait forever for a core."""
    workers = config.base.num_workers
    if config.max_concurrent is not None:
        concurrent = config.max_concurrent
    elif config.gpus_per_trial > 0:
        concurrent = max(1, math.floor(cluster_gpus / config.gpus_per_trial))
    else:
        concurrent = max(1, math.floor(cluster_cpus))
    concurrent = min(concurrent, config.num_samples)
    cpus = config.cpus_per_trial
    if cpus is None:
        cpus = (cluster_cpus - min(DATA_CPUS, cluster_cpus / 2)) / concurrent
        if cpus < 0.1 * workers:
            raise UserError(f"{concurrent} concurrent trials of {workers} workers do not fit on "
                            f"{cluster_cpus:g} CPUs; lower --max-concurrent")
    resources = {"CPU": round(cpus / workers, 4)}
    if config.gpus_per_trial > 0:
        resources["GPU"] = round(config.gpus_per_trial / workers, 4)
    return TrialPlan(max_concurrent=concurrent, resources_per_worker=resources)


@dataclass(frozen=True)
class SweepResult:
    """What a sweep did."""

    name: str
    experiment_dir: str
    parent_run_id: str
    tracking_uri: str
    trials: list[TrialOutcome]
    best: TrialOutcome | None
    best_test_mean_ap: float | None
    interrupted: bool
    resumed: bool
    #: The best trial's test means (``test_mean_ap``, ``test_mean_ef1``...).
    best_test_metrics: dict[str, float] = field(default_factory=dict)
    registered_version: int | None = None
    promotion: PromotionDecision | None = None


def run_sweep(config: SweepConfig, *, resume: bool = False, register_name: str | None = None,
              alias: str | None = None) -> SweepResult:
    """Run (or with ``resume`` continue) a sweep on the connected Ray cluster;
    register the best model as ``register_name`` when given (see
    :func:`register_best`)."""
    import ray
    from ray import tune

    experiment_dir = config.experiment_dir
    if resume:
        config = _load_settings(config)
    elif experiment_dir.exists():
        raise UserError(f"{experiment_dir} already holds a sweep; continue it with --resume "
                        "or choose another --name")
    base, info = prepare_config(dataclasses.replace(config.base, run_name=config.name))
    config = dataclasses.replace(config, base=base)
    training_domain(info)  # built (and kept with the dataset) once, not by every trial
    uri = base.tracking_uri
    parent_run_id, _ = tracking.start_run(uri, base.experiment_name, config.name,
                                          tags={SWEEP_TAG: config.name})
    if not resume:
        experiment_dir.mkdir(parents=True)
        (experiment_dir / SETTINGS_FILE).write_text(json.dumps(config.to_dict(), indent=2))
        tracking.log_params(uri, parent_run_id, _sweep_params(config))
        tracking.log_json(uri, parent_run_id, config.space.to_mapping(), "sweep/search_space.json")
        tracking.log_json(uri, parent_run_id, config.to_dict(), "sweep/sweep_config.json")

    plan = plan_trials(config, ray.cluster_resources().get("CPU", 1.0),
                       ray.cluster_resources().get("GPU", 0.0))
    settings = TrialSettings(
        base=dataclasses.replace(base, resources_per_worker=plan.resources_per_worker),
        sweep_name=config.name, mlflow_parent_run_id=parent_run_id,
        train_storage=str(experiment_dir / TRAIN_RUNS_DIR))
    trainable = make_trainable(settings, TRIAL_DRIVER_MEMORY)
    param_space = tune_param_space(config.space) if config.searcher == "random" else None
    logger.info("sweep %s: %d trials, %d at a time, %s per Train worker; MLflow parent run %s",
                config.name, config.num_samples, plan.max_concurrent, plan.resources_per_worker,
                parent_run_id)
    if resume:
        tuner = tune.Tuner.restore(str(experiment_dir), trainable=trainable,
                                   param_space=param_space, resume_unfinished=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=METRIC, mode=MODE, num_samples=config.num_samples,
                search_alg=build_searcher(config.searcher, config.space, seed=config.seed,
                                          max_concurrent=plan.max_concurrent),
                scheduler=build_scheduler(config.scheduler),
                trial_dirname_creator=lambda trial: trial.trial_id),
            run_config=tune.RunConfig(name=config.name, storage_path=str(experiment_dir.parent),
                                      verbose=1))
    grid = tuner.fit()

    interrupted = grid.num_terminated + grid.num_errors < len(grid)
    trials = _collect_outcomes(grid, config, uri, parent_run_id)
    best = best_trial(trials)
    best_test: dict[str, float] = {}
    for key in (metric_key("test", metric) for metric in METRICS):
        value = _run_metric(uri, best.mlflow_run_id, key) if best else None
        if value is not None:
            best_test[key] = value
    result = SweepResult(name=config.name, experiment_dir=str(experiment_dir),
                         parent_run_id=parent_run_id, tracking_uri=uri, trials=trials, best=best,
                         best_test_mean_ap=best_test.get(metric_key("test", "ap")),
                         best_test_metrics=best_test, interrupted=interrupted, resumed=resume)
    if interrupted:
        logger.warning("sweep %s was interrupted; continue it with --resume", config.name)
        return result
    _log_sweep_end(result, info)
    if register_name and best is not None:
        version, decision = register_best(result, register_name, alias)
        result = dataclasses.replace(result, registered_version=version, promotion=decision)
        tracking.set_tags(uri, parent_run_id, {"pcba.tune.registered": f"{register_name}/{version}",
                                               "pcba.tune.promotion": decision.reason})
    tracking.finish_run(uri, parent_run_id)
    return result


def register_best(result: SweepResult, name: str, alias: str | None) -> tuple[int, PromotionDecision]:
    """Register the best trial's model; point ``alias`` at it only if it
    beats the alias's current version on the same data
    (:func:`tuning.selection.decide_promotion`)."""
    from pipelines.serving.registry import get_alias_version, register_model

    assert result.best is not None and result.best.mlflow_run_id is not None
    run = tracking.client(result.tracking_uri).get_run(result.best.mlflow_run_id)
    if alias is None:
        decision = PromotionDecision(False, "no --alias given")
    else:
        current = get_alias_version(name, alias, tracking_uri=result.tracking_uri)
        champion = None if current is None else _champion(result.tracking_uri, current)
        decision = decide_promotion(result.best_test_mean_ap, data_identity(run.data.params),
                                    champion, alias)
    version = register_model(run.info.run_id, name, alias=alias if decision.promote else None,
                             tags={SWEEP_TAG: result.name, "pcba.tune.trial_id": result.best.trial_id},
                             tracking_uri=result.tracking_uri)
    return version, decision


def _load_settings(requested: SweepConfig) -> SweepConfig:
    """The stored settings of the sweep to resume (the search space, budget
    and base config cannot change mid-sweep); the data must be the same."""
    from ray import tune

    directory = requested.experiment_dir
    if not tune.Tuner.can_restore(str(directory)) or not (directory / SETTINGS_FILE).is_file():
        raise UserError(f"{directory}: no sweep to resume (expected Tune's experiment state and "
                        f"{SETTINGS_FILE}); check --name and --storage")
    stored = SweepConfig.from_dict(json.loads((directory / SETTINGS_FILE).read_text()))
    if Path(stored.base.data_dir).resolve() != Path(requested.base.data_dir).resolve():
        raise UserError(f"sweep {stored.name} ran on {stored.base.data_dir}, not "
                        f"{requested.base.data_dir}; resume it with the same --data")
    logger.info("resuming sweep %s with its stored settings", stored.name)
    return stored


def _collect_outcomes(grid: Any, config: SweepConfig, uri: str,
                      parent_run_id: str) -> list[TrialOutcome]:
    """Each trial's values, status, epochs and best valid AP, and its MLflow
    child run. A trial is finished when its training job completed (its
    MLflow run FINISHED, with test metrics and a logged model); a trial
    that ran but did not complete and did not fail was stopped by ASHA,
    and its run is closed as KILLED."""
    runs = _child_runs(uri, parent_run_id)
    outcomes = []
    for result in grid:
        trial_id = Path(result.path).name
        metrics = result.metrics or {}
        run = runs.get(trial_run_name(config.name, trial_id))
        run_status = run.info.status if run is not None else None
        if run_status == "FINISHED":
            status = FINISHED
        elif result.error is not None:
            status = ERROR
        elif metrics.get(EPOCHS_COMPLETED):
            status = EARLY_STOPPED
        else:
            status = NOT_RUN
        if run is not None and status in (EARLY_STOPPED, ERROR) and run_status != "FINISHED":
            tracking.finish_run(uri, run.info.run_id, status="KILLED" if status == EARLY_STOPPED
                                else "FAILED")
        if run is not None:
            tracking.set_tags(uri, run.info.run_id, {STATUS_TAG: status})
        outcomes.append(TrialOutcome(
            trial_id=trial_id, params={key: result.config[key] for key in sorted(result.config)
                                       if result.config[key] is not None},  # None: not this step's
            status=status, epochs=int(metrics.get(EPOCHS_COMPLETED, 0)),
            best_valid_mean_ap=float(metrics.get("best_valid_mean_ap", math.nan)),
            mlflow_run_id=run.info.run_id if run is not None else None,
            error=None if result.error is None else str(result.error).splitlines()[0][:200]))
    return sorted(outcomes, key=lambda outcome: outcome.trial_id)


def _child_runs(uri: str, parent_run_id: str) -> dict[str, Any]:
    """The sweep's child runs by Ray run name."""
    mlflow_client = tracking.client(uri)
    parent = mlflow_client.get_run(parent_run_id)
    runs = mlflow_client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{tracking.PARENT_RUN_TAG}` = '{parent_run_id}'", max_results=10000)
    return {run.data.tags.get(tracking.RAY_RUN_TAG): run for run in runs}


def _log_sweep_end(result: SweepResult, info: Any) -> None:
    """The parent run's record of the sweep: trials table, plot, best values."""
    uri, run_id = result.tracking_uri, result.parent_run_id
    tracking.log_table_csv(uri, run_id, trial_rows(result.trials, result.best and result.best.trial_id),
                          "sweep/trials.csv")
    tracking.log_figure(uri, run_id, trials_figure(result.trials), "sweep/trials.png")
    counts = {status: sum(trial.status == status for trial in result.trials)
              for status in (FINISHED, EARLY_STOPPED, ERROR, NOT_RUN)}
    tracking.log_metrics(uri, run_id, {f"trials_{status.replace(' ', '_').replace('-', '_')}": count
                                       for status, count in counts.items()})
    if result.best is None:
        return
    tracking.log_params(uri, run_id, {f"best.{key}": value for key, value in result.best.params.items()})
    tracking.log_metrics(uri, run_id, {"best_valid_mean_ap": result.best.best_valid_mean_ap,
                                       **({"best_test_mean_ap": result.best_test_mean_ap}
                                          if result.best_test_mean_ap is not None else {})})
    tracking.set_tags(uri, run_id, {"pcba.tune.best_trial": result.best.trial_id,
                                    "pcba.tune.best_run_id": str(result.best.mlflow_run_id)})
    tracking.log_json(uri, run_id, {"trial_id": result.best.trial_id, **result.best.params},
                      "sweep/best_config.json")


def _sweep_params(config: SweepConfig) -> dict[str, Any]:
    """The parent run's params: the sweep's settings and the fixed training
    settings the trials share (those of each step the space draws)."""
    searched = config.space.searched_params
    shared = {key: value for base in config.step_bases() for key, value in base.params().items()}
    fixed = {key: value for key, value in shared.items() if key not in searched}
    return {**fixed, "tune.num_samples": config.num_samples,
            "tune.max_concurrent": config.max_concurrent, "tune.searcher": config.searcher,
            "tune.scheduler": config.scheduler.kind,
            "tune.grace_period": config.scheduler.grace_period,
            "tune.reduction_factor": config.scheduler.reduction_factor, "tune.seed": config.seed,
            "tune.space": json.dumps(config.space.to_mapping())}


def _run_metric(uri: str, run_id: str | None, key: str) -> float | None:
    if run_id is None:
        return None
    return tracking.client(uri).get_run(run_id).data.metrics.get(key)


def _champion(uri: str, version: Any) -> Champion:
    """The alias's version as the promotion rule sees it: test mean AP and data
    identity from its training run (full precision; the version's tags hold
    rounded copies), from the version's tags when the run is gone."""
    from mlflow.exceptions import MlflowException

    try:
        run = tracking.client(uri).get_run(version.run_id)
        test_mean_ap, data = run.data.metrics.get("test_mean_ap"), data_identity(run.data.params)
    except MlflowException:
        tag = version.tags.get("test_mean_ap")
        test_mean_ap, data = (float(tag) if tag else None), data_identity(version.tags)
    return Champion(version=int(version.version), test_mean_ap=test_mean_ap, data=data)
