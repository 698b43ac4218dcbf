"""One Tune trial = one run of the training job.

A trial applies its sampled values (tuning/search_space.py) to the sweep's
base :class:`TrainConfig` and calls :func:`pipelines.training.run_training`:
the same ``TorchTrainer``, MLflow run (nested under the sweep's parent),
test evaluation and logged pyfunc as ``python -m pipelines train``. With
Ray Train V2 the trainer runs inside the Tune function trainable, and
:class:`TrialReportCallback` forwards each epoch's report to Tune.

Why the trainable is a class with its own ``cleanup``: when ASHA stops a
trial, Tune ends the trial's actor; the Train controller it owns dies with
it, but the placement group holding the Train workers' CPUs belongs to the
job, not to the controller. Ray Train's own cleaner finds dead controllers
through the Ray State API, which needs the dashboard (and on a host with
several Ray instances cannot tell which to ask), so without it every
stopped trial leaked its workers' CPUs and the sweep stalled. The trial's
``cleanup`` therefore aborts its Train run first (workers stopped,
placement group removed) and only then lets Tune end the actor.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass
from typing import Any

from ray.tune.integration.ray_train import TuneReportCallback

from pipelines.training.config import TrainConfig
from tuning.schedulers import TIME_ATTR as EPOCHS_COMPLETED
from tuning.search_space import TrialParams

logger = logging.getLogger(__name__)

#: Seconds the cleanup waits for the Train controller to abort.
ABORT_TIMEOUT_S = 60.0

#: Set by the trainable's cleanup when Tune stops the trial, read by the
#: training thread of the same actor (one trial per actor process: Tune's
#: reuse_actors is off) so the aborted fit is not reported as an error.
_stop_requested = threading.Event()


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of a sweep shares."""

    base: TrainConfig
    sweep_name: str
    mlflow_parent_run_id: str
    train_storage: str

    def trial_config(self, trial_id: str, sampled: dict[str, Any]) -> TrainConfig:
        """The training config of one trial: the base with the sampled values,
        a run name from the trial id (stable across --resume, so Ray Train
        and MLflow continue the same run) and the sweep's MLflow parent."""
        model, step, lr = TrialParams.from_config(sampled).apply(self.base.model, self.base.step,
                                                                  self.base.lr)
        return dataclasses.replace(
            self.base, model=model, step=step, lr=lr,
            run_name=trial_run_name(self.sweep_name, trial_id), storage_path=self.train_storage,
            mlflow_parent_run_id=self.mlflow_parent_run_id)


def trial_run_name(sweep_name: str, trial_id: str) -> str:
    """The Ray Train run name (and MLflow run name) of a trial."""
    return f"{sweep_name}-{trial_id}"


class TrialReportCallback(TuneReportCallback):
    """Ray Train -> Tune: each epoch's rank-0 metrics plus ``epochs_completed``;
    on the first report it also hands the Train controller's actor handle to
    the trial actor, so the trial can abort the run when Tune stops it.

    Runs in the Train controller process."""

    def __init__(self, trial_actor: Any) -> None:
        super().__init__()
        self.trial_actor = trial_actor
        self._handed_over = False

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]],
                     checkpoint: Any) -> None:
        import ray

        if not self._handed_over:
            self._handed_over = True
            self.trial_actor.attach_train_controller.remote(
                ray.get_runtime_context().current_actor)
        rank0 = {**metrics[0], EPOCHS_COMPLETED: int(metrics[0]["epoch"]) + 1}
        super().after_report(run_context, [rank0, *metrics[1:]], checkpoint)


def run_trial(config: dict[str, Any], settings: TrialSettings) -> None:
    """The Tune function: train this trial's config through the training job."""
    import ray
    import ray.tune

    from pipelines.training.trainer import run_training

    trial_id = ray.tune.get_context().get_trial_id()
    train_config = settings.trial_config(trial_id, config)
    callback = TrialReportCallback(ray.get_runtime_context().current_actor)
    try:
        run_training(train_config, callbacks=[callback])
    except Exception:
        if _stop_requested.is_set():
            logger.info("trial %s stopped by the scheduler", trial_id)
            return
        raise


def make_trainable(settings: TrialSettings, trial_memory_bytes: int) -> Any:
    """The Tune trainable class of a sweep, with its resource request.

    The trial actor only drives a Train run (whose controller takes no CPU
    either; the workers have their own placement group), so it asks for no
    CPU: on a small machine a CPU per driver would halve the trials that
    run at once. Ray needs a non-empty request, hence a little memory."""
    from ray import tune
    from ray.tune.trainable.function_trainable import wrap_function

    def trial(config: dict[str, Any]) -> None:
        run_trial(config, settings)

    class SweepTrial(wrap_function(trial, name="trial")):
        _train_controller: Any = None

        def attach_train_controller(self, controller: Any) -> None:
            self._train_controller = controller

        def cleanup(self) -> None:
            # Module-level helper: this class is pickled by value, its
            # methods must not capture the module's Event.
            stop_train_run(self._train_controller)
            super().cleanup()

    return tune.with_resources(SweepTrial, {"memory": trial_memory_bytes})


def stop_train_run(controller: Any) -> None:
    """Abort a trial's Train run (a no-op when it already finished or never
    reported) and wait for it; the trial's thread then returns quietly."""
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    if controller is None:
        return
    _stop_requested.set()
    try:
        ray.get(controller.abort.remote(), timeout=ABORT_TIMEOUT_S)
    except RayActorError:
        pass  # abort ends the controller actor: the expected outcome
    except GetTimeoutError:
        logger.warning("Train controller did not abort within %.0f s", ABORT_TIMEOUT_S)
