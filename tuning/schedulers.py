"""How the sweep spends its budget: the trial scheduler (ASHA early stopping
on validation mean AP) and the search algorithm (seeded random search, or
Optuna's TPE through Tune's integration)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from models.metrics import SELECTION_METRIC
from tuning.search_space import SearchSpace, optuna_define_by_run

#: The metric every epoch reports (pipelines/training) and the sweep ranks by.
METRIC = SELECTION_METRIC
MODE = "max"
#: ASHA's clock: the epochs a trial's Train run has completed (reported with
#: every epoch; the Train run's own count, so a trial resumed from its Train
#: checkpoint keeps its place, where Tune's training_iteration would restart).
TIME_ATTR = "epochs_completed"
SCHEDULERS = ("asha", "none")
SEARCHERS = ("random", "optuna")


@dataclass(frozen=True)
class SchedulerConfig:
    """ASHA (Li et al. 2020, "A System for Massively Parallel Hyperparameter
    Tuning"): a trial reaching rung ``grace_period * reduction_factor**k``
    epochs goes on only if its valid mean AP is in the top
    ``1 / reduction_factor`` of the trials that reached that rung;
    ``max_epochs`` is every trial's budget."""

    kind: str = "asha"
    max_epochs: int = 10
    grace_period: int = 1
    reduction_factor: float = 2.0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {self.kind!r}")
        if self.max_epochs < 1 or not 1 <= self.grace_period <= self.max_epochs:
            raise ValueError(f"need 1 <= grace_period ({self.grace_period}) <= epochs "
                             f"({self.max_epochs})")
        if self.reduction_factor <= 1:
            raise ValueError(f"reduction_factor must be > 1, got {self.reduction_factor}")

    def rungs(self) -> list[int]:
        """Epochs at which ASHA compares trials (its milestones below max)."""
        rungs, epochs = [], float(self.grace_period)
        while epochs < self.max_epochs:
            rungs.append(int(epochs))
            epochs *= self.reduction_factor
        return rungs


def build_scheduler(config: SchedulerConfig) -> Any:
    """The Tune scheduler (None: every trial runs its full budget)."""
    if config.kind == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    # stop_last_trials=False: a trial reaching its last epoch ends by itself,
    # after the training job has tested and logged its model; a stop there
    # would cut that short.
    return ASHAScheduler(time_attr=TIME_ATTR, max_t=config.max_epochs,
                         grace_period=config.grace_period,
                         reduction_factor=config.reduction_factor, stop_last_trials=False)


def build_searcher(kind: str, space: SearchSpace, *, seed: int, max_concurrent: int) -> Any:
    """The search algorithm, running at most ``max_concurrent`` trials at once
    (the Tuner's own max_concurrent_trials is ignored for a searcher passed
    in, so the limit lives here): ``random`` is Tune's seeded
    BasicVariantGenerator (the space goes in the Tuner's param_space, see
    :func:`tuning.search_space.tune_param_space`); ``optuna`` is seeded TPE
    over a define-by-run space (the Tuner then takes no param_space)."""
    if kind not in SEARCHERS:
        raise ValueError(f"searcher must be one of {SEARCHERS}, got {kind!r}")
    if kind == "random":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent)
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    # metric and mode come from the TuneConfig (Tune refuses them twice).
    searcher = OptunaSearch(space=optuna_define_by_run(space),
                            sampler=optuna.samplers.TPESampler(seed=seed))
    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
