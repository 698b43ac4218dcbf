"""Run (or resume) a sweep on the connected Ray cluster: the Tuner, the
MLflow parent run with its settings, trials table, plot and best trial, and
the trials' outcomes read back from Tune and MLflow."""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any

from models.metrics import METRICS, metric_key
from pipelines.errors import UserError
from pipelines.experiments.sweeps.config import (
    SETTINGS_FILE,
    STATUS_TAG,
    SWEEP_TAG,
    TRAIN_RUNS_DIR,
    TRIAL_DRIVER_MEMORY,
    SweepConfig,
    SweepResult,
    plan_trials,
)
from pipelines.experiments.sweeps.registration import register_best
from pipelines.experiments.sweeps.report import trial_rows, trials_figure
from pipelines.experiments.sweeps.trial import (
    EPOCHS_COMPLETED,
    TrialSettings,
    make_trainable,
    trial_run_name,
)
from pipelines.platform import tracking
from pipelines.training.domain_cache import training_domain
from pipelines.training.trainer import prepare_config
from tuning.schedulers import METRIC, MODE, build_scheduler, build_searcher
from tuning.search_space import tune_param_space
from tuning.selection import EARLY_STOPPED, ERROR, FINISHED, NOT_RUN, TrialOutcome, best_trial

logger = logging.getLogger(__name__)


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
