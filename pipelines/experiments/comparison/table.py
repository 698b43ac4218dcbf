"""A configuration's row: means and standard deviations over seeds, Delta
versus the single-task reference, and the table as text, CSV and markdown."""
from __future__ import annotations

import dataclasses
import io
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from models.metrics import delta_vs_reference
from pipelines.experiments.comparison.configurations import REFERENCE
from pipelines.experiments.comparison.outcome import RunOutcome


@dataclass(frozen=True)
class Summary:
    """One configuration's row: means and standard deviations over seeds
    (std 0 with one seed); Delta and diversity None where they do not apply."""

    configuration: str
    seeds: int
    ap_mean: float
    ap_std: float
    roc_auc_mean: float
    roc_auc_std: float
    ef1_mean: float
    ef1_std: float
    delta_ap_mean: float | None
    delta_ap_std: float | None
    delta_roc_auc_mean: float | None
    delta_roc_auc_std: float | None
    diversity_mean: float | None
    diversity_std: float | None
    epochs_mean: float
    best_epoch_mean: float
    epoch_seconds: float
    wall_seconds: float
    samples_per_second: float
    n_parameters: int

    def metrics(self) -> dict[str, float]:
        """Numeric fields (MLflow metrics of the configuration's run)."""
        return {f.name: float(getattr(self, f.name)) for f in fields(self)
                if f.name != "configuration" and getattr(self, f.name) is not None}

    def display_row(self) -> dict[str, object]:
        """The printed / markdown row: mean +- std as text."""
        return {
            "configuration": self.configuration,
            "test PR-AUC": _pm(self.ap_mean, self.ap_std),
            "test ROC-AUC": _pm(self.roc_auc_mean, self.roc_auc_std),
            "test EF1%": _pm(self.ef1_mean, self.ef1_std, digits=2),
            "Delta PR-AUC %": _pm(self.delta_ap_mean, self.delta_ap_std, digits=1),
            "Delta ROC-AUC %": _pm(self.delta_roc_auc_mean, self.delta_roc_auc_std, digits=1),
            "diversity": _pm(self.diversity_mean, self.diversity_std, digits=3),
            "epochs": f"{self.epochs_mean:.1f} (best {self.best_epoch_mean + 1:.1f})",
            "epoch s": f"{self.epoch_seconds:.1f}",
            "samples/s": f"{self.samples_per_second:,.0f}",
            "wall s": f"{self.wall_seconds:.0f}",
            "params": f"{self.n_parameters:,}",
        }


def reference_per_task(outcomes: Sequence[RunOutcome]) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-task test AP and ROC-AUC of the reference, averaged over its seeds
    (NaN where a task is unscored in any seed); None without reference runs."""
    runs = [outcome for outcome in outcomes if outcome.configuration == REFERENCE]
    if not runs:
        return None
    return (np.mean([run.evaluation.metrics.ap for run in runs], axis=0),
            np.mean([run.evaluation.metrics.roc_auc for run in runs], axis=0))


def summarize(runs: Sequence[RunOutcome], reference: tuple[np.ndarray, np.ndarray] | None) -> Summary:
    """The row of one configuration's seed runs; Delta is per seed against the
    reference's per-task means (:func:`reference_per_task`)."""
    if not runs or len({run.configuration for run in runs}) != 1:
        raise ValueError("summarize takes the runs of exactly one configuration")
    test = [run.evaluation.metrics for run in runs]
    ap_mean, ap_std = _mean_std([metrics.mean_ap for metrics in test])
    auc_mean, auc_std = _mean_std([metrics.mean_roc_auc for metrics in test])
    ef1_mean, ef1_std = _mean_std([metrics.mean_ef1 for metrics in test])
    delta_ap = delta_auc = (None, None)
    if reference is not None:
        delta_ap = _mean_std([delta_vs_reference(metrics.ap, reference[0]) for metrics in test])
        delta_auc = _mean_std([delta_vs_reference(metrics.roc_auc, reference[1]) for metrics in test])
    scores = [run.evaluation.diversity for run in runs]
    diversity = _mean_std(scores) if all(score is not None for score in scores) else (None, None)
    return Summary(
        configuration=runs[0].configuration, seeds=len(runs),
        ap_mean=ap_mean, ap_std=ap_std, roc_auc_mean=auc_mean, roc_auc_std=auc_std,
        ef1_mean=ef1_mean, ef1_std=ef1_std,
        delta_ap_mean=delta_ap[0], delta_ap_std=delta_ap[1],
        delta_roc_auc_mean=delta_auc[0], delta_roc_auc_std=delta_auc[1],
        diversity_mean=diversity[0], diversity_std=diversity[1],
        epochs_mean=float(np.mean([len(run.history) for run in runs])),
        best_epoch_mean=float(np.mean([run.best_epoch for run in runs])),
        epoch_seconds=statistics.median(run.median_epoch_seconds for run in runs),
        wall_seconds=float(np.mean([run.wall_seconds for run in runs])),
        samples_per_second=float(np.mean([run.samples_per_second for run in runs])),
        n_parameters=runs[0].n_parameters)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = [float(value) for value in values]
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _pm(mean: float | None, std: float | None, digits: int = 4) -> str:
    if mean is None or not math.isfinite(mean):
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def table_csv(summaries: Sequence[Summary]) -> str:
    """The numeric table (one column per Summary field)."""
    import pandas as pd

    buffer = io.StringIO()
    pd.DataFrame([dataclasses.asdict(summary) for summary in summaries]).to_csv(buffer, index=False)
    return buffer.getvalue()


def table_markdown(summaries: Sequence[Summary]) -> str:
    """The printed table as a GitHub markdown table."""
    rows = [summary.display_row() for summary in summaries]
    if not rows:
        return ""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[column]) for column in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"
