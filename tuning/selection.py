"""Which trial wins a sweep, and whether it replaces the registered champion.

The winner is the finished trial (one that ran its whole budget, so it has
a tested, logged model) with the best validation mean AP; trials stopped
by ASHA only compete through the rungs that stopped them.

Promotion compares test mean AP, and only on the same data: a champion
trained on another dataset (other molecules, split or fingerprint) may have
trained on molecules of this test split, or was tested on others, so the
two numbers say nothing about each other. Then nothing is compared, the
alias stays where it is (a champion is never displaced on incomparable
evidence), and the summary says why; moving it is a deliberate
``python -m pipelines register --run-id ... --alias ...``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Trial states as the summary shows them.
FINISHED, EARLY_STOPPED, ERROR, NOT_RUN = "finished", "early-stopped", "error", "not run"

#: What "the same data" means: the same dataset folder, the same fingerprint
#: spec and task order (the metadata hash) and the same split sizes.
DATA_IDENTITY_KEYS = ("data.path", "data.metadata_hash", "data.rows.train", "data.rows.valid",
                      "data.rows.test")


@dataclass(frozen=True)
class TrialOutcome:
    """One trial as the sweep saw it."""

    trial_id: str
    params: Mapping[str, Any]
    status: str
    epochs: int
    best_valid_mean_ap: float
    mlflow_run_id: str | None = None
    error: str | None = None


def best_trial(trials: Iterable[TrialOutcome]) -> TrialOutcome | None:
    """The finished trial with the best validation mean AP (ties: the
    earlier trial id), or None when no trial finished."""
    finished = [trial for trial in trials
                if trial.status == FINISHED and math.isfinite(trial.best_valid_mean_ap)]
    if not finished:
        return None
    return min(finished, key=lambda trial: (-trial.best_valid_mean_ap, trial.trial_id))


def data_identity(values: Mapping[str, Any]) -> dict[str, str]:
    """The data identity in a run's params or a model version's tags (as text,
    which is how MLflow stores both)."""
    return {key: str(values[key]) for key in DATA_IDENTITY_KEYS if key in values}


@dataclass(frozen=True)
class Champion:
    """The registered version an alias points at."""

    version: int
    test_mean_ap: float | None
    data: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PromotionDecision:
    """Whether the sweep's best model takes the alias, and the reason shown."""

    promote: bool
    reason: str


def decide_promotion(candidate_test_mean_ap: float | None, candidate_data: Mapping[str, str],
                     champion: Champion | None, alias: str) -> PromotionDecision:
    """Promote when there is no champion, or when the candidate beats it on
    test mean AP on the same data (strictly: a tie keeps the champion)."""
    if champion is None:
        return PromotionDecision(True, f"no @{alias} yet")
    if candidate_test_mean_ap is None or not math.isfinite(candidate_test_mean_ap):
        return PromotionDecision(False, "the best trial has no test mean AP (no test split?)")
    differing = sorted(key for key in DATA_IDENTITY_KEYS
                       if champion.data.get(key) != candidate_data.get(key))
    if differing:
        return PromotionDecision(False, f"@{alias} (version {champion.version}) was trained on "
                                        f"other data ({', '.join(differing)} differ): not compared, "
                                        "alias left in place")
    if champion.test_mean_ap is None:
        return PromotionDecision(False, f"@{alias} (version {champion.version}) has no test mean AP "
                                        "to compare with: alias left in place")
    if candidate_test_mean_ap > champion.test_mean_ap:
        return PromotionDecision(True, f"test mean AP {candidate_test_mean_ap:.4f} beats @{alias} "
                                       f"(version {champion.version}) {champion.test_mean_ap:.4f}")
    return PromotionDecision(False, f"test mean AP {candidate_test_mean_ap:.4f} does not beat "
                                    f"@{alias} (version {champion.version}) "
                                    f"{champion.test_mean_ap:.4f}")
