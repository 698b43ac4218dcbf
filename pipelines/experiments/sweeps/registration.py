"""The best trial into the model registry, and the alias only to a model
that beats the alias's current version on the same data."""
from __future__ import annotations

from typing import Any

from pipelines.experiments.sweeps.config import SWEEP_TAG, SweepResult
from pipelines.platform import tracking
from tuning.selection import Champion, PromotionDecision, data_identity, decide_promotion


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
