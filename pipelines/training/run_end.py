"""The end of a training run: the best model calibrated and tested, and
what MLflow keeps of it (metrics, per-task tables, expert figures; for an
ensemble, its members beside it and its spread report)."""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from featurize.dataset import DatasetInfo
from models.ensemble import Ensemble
from models.networks.base import MultiTaskModel
from pipelines.platform import tracking
from pipelines.serving.bundle import ModelBundle
from pipelines.training.config import TrainConfig
from pipelines.training.domain_cache import training_domain
from pipelines.training.evaluation import FinalEvaluation, evaluate_bundle, fit_bundle_calibration
from pipelines.training.worker import VALID_SPLIT

logger = logging.getLogger(__name__)

#: Metric prefix of the calibrated test scores (test_calibrated_mean_ece).
CALIBRATED_TEST = "test_calibrated"


@dataclass(frozen=True)
class NetworkFit:
    """One network's Ray Train run: where its checkpoints are and how it
    went. ``reused``: an ensemble member an earlier attempt had finished."""

    run_name: str
    mlflow_run_id: str
    storage_dir: str
    best_checkpoint: str
    latest_checkpoint: str
    epochs_completed: int
    best_epoch: int
    best_valid_mean_ap: float
    stopped_early: bool
    samples_per_s_per_worker: float
    reused: bool = False

    def summary(self) -> dict[str, float]:
        """The run-end metrics MLflow gets for this network."""
        return {"epochs_completed": self.epochs_completed, "best_epoch": self.best_epoch,
                "best_valid_mean_ap": self.best_valid_mean_ap, "stopped_early": float(self.stopped_early)}


def calibrate_and_test(model: MultiTaskModel | Ensemble, info: DatasetInfo, *,
                        with_domain: bool = True) -> tuple[ModelBundle, FinalEvaluation | None]:
    """The model as a bundle (with the training split's applicability domain
    unless told not), its calibration fitted on the valid split, and its
    evaluation on the test split (None without one)."""
    bundle = ModelBundle(model=model.eval(), spec=info.spec, tasks=list(info.tasks),
                         domain=training_domain(info) if with_domain else None)
    bundle = dataclasses.replace(bundle, calibration=fit_bundle_calibration(bundle, info, VALID_SPLIT))
    logger.info("calibration on %s: %s", VALID_SPLIT, ", ".join(
        f"{count} {method}" for method, count in bundle.calibration.method_counts().items()))
    evaluation = evaluate_bundle(bundle, info) if info.split_counts.get("test") else None
    return bundle, evaluation


def run_summary(networks: Sequence[NetworkFit]) -> dict[str, float]:
    """The run-end metrics of one network, or an ensemble's members' totals
    (their own are in their nested runs)."""
    if len(networks) == 1:
        return networks[0].summary()
    return {"ensemble_members": len(networks),
            "epochs_completed": sum(network.epochs_completed for network in networks),
            "members_mean_best_valid_mean_ap": float(np.mean([network.best_valid_mean_ap
                                                                for network in networks]))}


def test_means(evaluation: FinalEvaluation) -> dict[str, float]:
    """A model's test means: AP, ROC-AUC, EF1% of its raw probabilities, ECE
    and Brier score raw and calibrated (the per-member comparison)."""
    means = evaluation.metrics.means("test")
    report = evaluation.calibration
    if report is not None:
        means.update({**report.raw.means("test"), **report.calibrated.means(CALIBRATED_TEST)})
    return means


def log_member_table(uri: str, run_id: str, networks: Sequence[NetworkFit],
                      member_tests: Sequence[dict[str, float]], evaluation: FinalEvaluation | None) -> None:
    """members/test_metrics.csv: each member's test means beside the
    ensemble's; the members' own curves are in their nested runs."""
    rows = [{"model": f"member {index} (seed + {index})", "run": network.mlflow_run_id, **test}
            for index, (network, test) in enumerate(zip(networks, member_tests))]
    if evaluation is not None:
        rows.append({"model": "ensemble (mean probability)", "run": run_id, **test_means(evaluation)})
    tracking.log_table_csv(uri, run_id, rows, "members/test_metrics.csv")
    tracking.log_metrics(uri, run_id, {f"member_{index}_{key}": value for index, test
                                       in enumerate(member_tests) for key, value in test.items()})


def log_run_end(uri: str, run_id: str, config: TrainConfig, info: DatasetInfo,
                 summary: dict[str, float], evaluation: FinalEvaluation | None) -> None:
    """Final metrics and artifacts: test means + per-task table, calibration
    (ECE and Brier score raw and calibrated, means and per task; the
    calibrated scores' ranking means) + per-task table, diversity score +
    heatmap, gate usage plot, exclusive-expert assignment, config,
    fingerprint spec and dataset identity."""
    summary = dict(summary)
    tracking.log_json(uri, run_id, config.to_dict(), "config/train_config.json")
    tracking.log_json(uri, run_id, {**tracking.dataset_identity(info), "tasks": info.tasks,
                                    "fingerprint_spec": info.spec.to_json()},
                      "config/dataset.json")
    if evaluation is not None:
        test = evaluation.metrics
        summary.update({**test_means(evaluation), **test.per_task("test", info.tasks),
                        "test_tasks_skipped": test.n_skipped, "test_rows": evaluation.n_rows})
        tracking.log_table_csv(uri, run_id, test.rows(info.tasks), "test/per_task_metrics.csv")
        report = evaluation.calibration
        if report is not None:
            # Unprefixed names are the raw model's, like test_mean_ap;
            # "test_calibrated" names what the model serves.
            summary.update({**report.raw.per_task("test", info.tasks),
                            **report.calibrated.per_task(CALIBRATED_TEST, info.tasks),
                            **report.calibrated_ranking.means(CALIBRATED_TEST),
                            **{f"calibration_tasks_{method}": count for method, count
                               in report.calibration.method_counts().items()}})
            tracking.log_table_csv(uri, run_id, report.rows(), "test/per_task_calibration.csv")
        if evaluation.spread is not None:
            summary.update({f"test_spread_{name}": value for name, value in evaluation.spread.means().items()})
            tracking.log_table_csv(uri, run_id, evaluation.spread.rows(info.tasks), "test/per_task_spread.csv")
        exclusive = {f"expert_{expert}": info.tasks[task]
                     for expert, task in evaluation.exclusive_expert_task.items()}
        tracking.log_json(uri, run_id, {"exclusivity": config.model.exclusivity,
                                        "expert_task": exclusive}, "experts/exclusive_experts.json")
        if evaluation.distance_matrix is not None:
            summary["diversity_score"] = evaluation.diversity
            tracking.log_json(uri, run_id, np.round(evaluation.distance_matrix, 6).tolist(),
                              "experts/distance_matrix.json")
            tracking.log_figure(uri, run_id, tracking.diversity_heatmap(
                evaluation.distance_matrix, evaluation.diversity, config.model.architecture),
                "experts/diversity_heatmap.png")
        if evaluation.gate_usage is not None:
            tracking.log_figure(uri, run_id, tracking.gate_usage_plot(
                evaluation.gate_usage, info.tasks, evaluation.exclusive_expert_task),
                "experts/gate_usage.png")
    tracking.log_metrics(uri, run_id, summary, step=summary["epochs_completed"])
