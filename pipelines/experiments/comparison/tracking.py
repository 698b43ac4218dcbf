"""The MLflow runs of a comparison: one parent, a child per configuration,
a grandchild per seed."""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from featurize.dataset import DatasetInfo
from pipelines.experiments.comparison.configurations import REFERENCE, Budget, Configuration
from pipelines.experiments.comparison.outcome import RunOutcome
from pipelines.experiments.comparison.table import Summary, table_csv, table_markdown
from pipelines.names import COMPARISON_EXPERIMENT
from pipelines.platform import tracking
from pipelines.training.config import TrainConfig


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
                "train_loss": epoch.train_loss, **epoch.valid.means("valid"), "train_seconds": epoch.train_seconds,
                "train_samples_per_s": epoch.train_samples / max(epoch.train_seconds, 1e-9)},
                step=epoch.epoch)
        test = outcome.evaluation.metrics
        tracking.log_metrics(self.uri, run_id, {
            **test.means("test"),
            "test_tasks_skipped": test.n_skipped, "best_epoch": outcome.best_epoch,
            "epochs_completed": len(outcome.history), "wall_seconds": outcome.wall_seconds,
            "samples_per_second": outcome.samples_per_second,
            "median_epoch_seconds": outcome.median_epoch_seconds,
            "n_parameters": outcome.n_parameters,
            **({} if outcome.evaluation.diversity is None
               else {"diversity_score": outcome.evaluation.diversity})})
        tracking.set_tags(self.uri, run_id, {"comparison.stop_reason": outcome.stop_reason})
        tracking.log_table_csv(self.uri, run_id, test.rows(self.info.tasks), "test/per_task_metrics.csv")
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


def comparison_params(data: DatasetInfo, configurations: Sequence[Configuration], seeds: Sequence[int],
                      budget: Budget, device: str) -> dict[str, Any]:
    """The parent run's params: the budget, the rows, the seeds, the data."""
    return {**{f"budget.{key}": value for key, value in dataclasses.asdict(budget).items()},
            "configurations": [configuration.name for configuration in configurations],
            "seeds": list(seeds), "device": device, "reference": REFERENCE,
            **tracking.dataset_identity(data)}


def default_run_name(info: DatasetInfo) -> str:
    return f"compare-{Path(info.path).name}-{time.strftime('%Y%m%d-%H%M%S')}"


def mlflow_tracker(tracking_uri: str | None, experiment: str = COMPARISON_EXPERIMENT,
                   run_name: str | None = None, *, seeds: Sequence[int], budget: Budget,
                   device: str) -> Callable[[DatasetInfo, list[Configuration]], ComparisonTracker]:
    """The ``tracker`` argument of :func:`run_comparison` for an MLflow store."""

    def open_tracker(info: DatasetInfo, configurations: list[Configuration]) -> ComparisonTracker:
        return ComparisonTracker(tracking_uri, experiment, run_name or default_run_name(info), info,
                                 comparison_params(info, configurations, seeds, budget, device))

    return open_tracker
