"""A sweep's settings (what every trial shares, the space, the scheduler),
how many trials run at once on what, and the record of what a sweep did."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.errors import UserError
from pipelines.training.config import TrainConfig
from tuning.schedulers import SchedulerConfig
from tuning.search_space import SearchSpace
from tuning.selection import PromotionDecision, TrialOutcome

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
