"""Per-task ranking metrics over non-missing labels (PR-AUC, ROC-AUC, the
enrichment factor at 1 %), calibration metrics (expected calibration error,
Brier score), and the paper's Delta.

Average precision and ROC-AUC are written in numpy (no scikit-learn in the
hot path of evaluation, and their definitions are explicit here); tests
compare them with scikit-learn. Tasks whose present labels are all one class
have neither metric: they get NaN and are counted in `n_skipped`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The per-task metrics every evaluation computes (TaskMetrics' fields).
METRICS = ("ap", "roc_auc", "ef1")
#: Share of a task's ranked molecules EF is read at (EF1%).
EF_FRACTION = 0.01
#: The per-task calibration metrics (CalibrationMetrics' fields).
CALIBRATION_METRICS = ("ece", "brier")
#: Equal-width probability bins of the expected calibration error.
ECE_BINS = 10


def metric_key(split: str, metric: str) -> str:
    """The logged name of a split's mean metric: ``valid_mean_ap``."""
    return f"{split}_mean_{metric}"


#: What early stopping, checkpoints, Tune and the registry rank models by.
SELECTION_METRIC = metric_key("valid", "ap")


@dataclass(frozen=True)
class TaskMetrics:
    """Per-task `ap`, `roc_auc` and `ef1` (`float64[K]`, NaN = skipped) and
    their means over the tasks that have both classes."""

    ap: np.ndarray
    roc_auc: np.ndarray
    ef1: np.ndarray
    n_skipped: int
    mean_ap: float
    mean_roc_auc: float
    mean_ef1: float

    def means(self, split: str) -> dict[str, float]:
        """Every metric's mean under its logged name (:func:`metric_key`)."""
        return {metric_key(split, metric): getattr(self, f"mean_{metric}") for metric in METRICS}

    def per_task(self, split: str, tasks: list[str]) -> dict[str, float]:
        """``{split}_{metric}/<task>`` for every metric (NaN = skipped task)."""
        return {f"{split}_{metric}/{task}": float(value) for metric in METRICS
                for task, value in zip(tasks, getattr(self, metric))}

    def rows(self, tasks: list[str]) -> list[dict[str, object]]:
        """One row per task (the per-task CSV a run logs)."""
        return [{"task": task, **{metric: float(getattr(self, metric)[index]) for metric in METRICS}}
                for index, task in enumerate(tasks)]


def average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """AP = sum_n (R_n - R_{n-1}) P_n over distinct score thresholds, high to
    low (the step-wise area under the precision-recall curve, no interpolation,
    ties broken as one threshold: scikit-learn's definition)."""
    tps, fps = _cumulative_counts(y_true, y_score)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def roc_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """ROC-AUC as the Mann-Whitney statistic: the probability that a random
    positive outscores a random negative, ties counting one half (average ranks)."""
    positives = y_true.astype(bool)
    n_pos = int(positives.sum())
    n_neg = positives.size - n_pos
    ranks = average_ranks(y_score)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``, each run of ties at its average rank."""
    values = np.asarray(values)
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], ordered.size]
    ranks = np.empty(ordered.size)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (Pearson's of the average ranks); NaN when
    either side is constant."""
    rx, ry = average_ranks(x) - (len(x) + 1) / 2.0, average_ranks(y) - (len(y) + 1) / 2.0
    norm = np.sqrt((rx ** 2).sum() * (ry ** 2).sum())
    return float((rx * ry).sum() / norm) if norm > 0 else float("nan")


def enrichment_factor(y_true: np.ndarray, y_score: np.ndarray, fraction: float = EF_FRACTION) -> float:
    """EF at ``fraction``: actives among the top ceil(fraction * N) ranked
    molecules over the count random picking expects there (n_top * actives /
    N), the early-enrichment figure of virtual screening. Ties at the cut
    are ranked in input order (stable sort)."""
    positives = np.asarray(y_true).astype(bool)
    n_top = max(1, int(np.ceil(fraction * positives.size)))
    top = np.argsort(-np.asarray(y_score, dtype=np.float64), kind="mergesort")[:n_top]
    expected = n_top * positives.sum() / positives.size
    return float(positives[top].sum() / expected)


def _cumulative_counts(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives above each distinct threshold, scores descending."""
    order = np.argsort(-y_score, kind="mergesort")
    scores, truth = y_score[order], y_true[order].astype(np.float64)
    last_of_run = np.r_[np.flatnonzero(scores[1:] != scores[:-1]), scores.size - 1]
    tps = np.cumsum(truth)[last_of_run]
    fps = (last_of_run + 1) - tps
    return tps, fps


def evaluate_tasks(y_true: np.ndarray, y_score: np.ndarray, mask: np.ndarray) -> TaskMetrics:
    """Per-task AP and ROC-AUC of `y_score` (`[N, K]`, any monotone score: logits
    or probabilities) against `y_true` (`[N, K]`, 0/1) where `mask` is True."""
    y_true, y_score, mask = _check_task_arrays(y_true, y_score, mask)
    n_tasks = y_true.shape[1]
    ap = np.full(n_tasks, np.nan)
    auc = np.full(n_tasks, np.nan)
    ef1 = np.full(n_tasks, np.nan)
    for task in range(n_tasks):
        present = mask[:, task]
        truth = y_true[present, task] > 0
        if truth.all() or not truth.any():
            continue
        scores = y_score[present, task]
        ap[task] = average_precision(truth, scores)
        auc[task] = roc_auc(truth, scores)
        ef1[task] = enrichment_factor(truth, scores)
    scored = ~np.isnan(ap)

    def mean(values: np.ndarray) -> float:
        return float(values[scored].mean()) if scored.any() else float("nan")

    return TaskMetrics(ap=ap, roc_auc=auc, ef1=ef1, n_skipped=int(n_tasks - scored.sum()),
                       mean_ap=mean(ap), mean_roc_auc=mean(auc), mean_ef1=mean(ef1))


@dataclass(frozen=True)
class CalibrationMetrics:
    """Per-task `ece` and `brier` (`float64[K]`, NaN = no present label) and
    their means over the tasks with at least one present label. Unlike the
    ranking metrics, both are defined for a task whose labels are all one
    class (how far its probabilities are from 0 or 1), so those tasks count."""

    ece: np.ndarray
    brier: np.ndarray
    mean_ece: float
    mean_brier: float

    def means(self, split: str) -> dict[str, float]:
        """Both means under their logged names (:func:`metric_key`)."""
        return {metric_key(split, metric): getattr(self, f"mean_{metric}")
                for metric in CALIBRATION_METRICS}

    def per_task(self, split: str, tasks: list[str]) -> dict[str, float]:
        """``{split}_{metric}/<task>`` (NaN = task without present labels)."""
        return {f"{split}_{metric}/{task}": float(value) for metric in CALIBRATION_METRICS
                for task, value in zip(tasks, getattr(self, metric))}


def expected_calibration_error(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE = sum_b (n_b / N) |mean label_b - mean probability_b| over
    ``n_bins`` equal-width bins of [0, 1] ([0, 0.1), ..., [0.9, 1.0] for 10:
    a probability of exactly 1 falls in the last bin); empty bins add nothing."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    if y_true.size == 0:
        return float("nan")
    bins = np.minimum((y_prob * n_bins).astype(np.int64), n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    gap = np.bincount(bins, weights=y_true, minlength=n_bins) - np.bincount(bins, weights=y_prob,
                                                                           minlength=n_bins)
    # sum_b (n_b / N) |sum_b(y - p) / n_b| = sum_b |sum_b(y - p)| / N
    return float(np.abs(gap[counts > 0]).sum() / y_true.size)


def brier_score(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    """Mean squared difference between probability and 0/1 label."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    return float(np.mean((y_prob - y_true) ** 2)) if y_true.size else float("nan")


def evaluate_calibration(y_true: np.ndarray, y_prob: np.ndarray, mask: np.ndarray,
                         n_bins: int = ECE_BINS) -> CalibrationMetrics:
    """Per-task ECE and Brier score of probabilities `y_prob` (`[N, K]` in
    [0, 1]) against `y_true` (`[N, K]`, 0/1) where `mask` is True."""
    y_true, y_prob, mask = _check_task_arrays(y_true, y_prob, mask)
    n_tasks = y_true.shape[1]
    ece, brier = np.full(n_tasks, np.nan), np.full(n_tasks, np.nan)
    for task in range(n_tasks):
        present = mask[:, task]
        if not present.any():
            continue
        truth = (y_true[present, task] > 0).astype(np.float64)
        ece[task] = expected_calibration_error(truth, y_prob[present, task], n_bins)
        brier[task] = brier_score(truth, y_prob[present, task])
    labelled = ~np.isnan(ece)

    def mean(values: np.ndarray) -> float:
        return float(values[labelled].mean()) if labelled.any() else float("nan")

    return CalibrationMetrics(ece=ece, brier=brier, mean_ece=mean(ece), mean_brier=mean(brier))


#: Share of each task's ranking that a spread report reads: the hits a
#: chemist would order (EF1%'s cut).
TOP_FRACTION = 0.01
SPREAD_FIGURES = ("top_precision", "top_precision_low_spread", "top_precision_high_spread",
                  "top_precision_low_excess", "top_precision_high_excess",
                  "spearman_error", "spearman_error_top")


@dataclass(frozen=True)
class SpreadReport:
    """Does an ensemble's spread tell right from wrong? Per task (NaN where
    the task has no positive, or too few rows): the precision (share of
    actives) of the top ``TOP_FRACTION`` of the ranking, of those top rows in
    the lowest quartile of spread and in the highest, the same for the
    quartiles of *excess* spread (the spread less its straight-line trend
    with the rank inside the top rows: spread moves with the score, and the
    score alone already predicts actives), and the Spearman correlation of
    spread with the absolute error |label - score| over all present labels
    and over the top rows only. A spread that tells right hits from wrong
    ones puts more actives in the low quartiles than in the high ones, the
    excess quartiles included. Over all labels, where nearly every label is
    inactive and its error is its score, the correlation mostly says that
    spread grows with the score."""

    top_precision: np.ndarray
    top_precision_low_spread: np.ndarray
    top_precision_high_spread: np.ndarray
    top_precision_low_excess: np.ndarray
    top_precision_high_excess: np.ndarray
    spearman_error: np.ndarray
    spearman_error_top: np.ndarray

    def means(self) -> dict[str, float]:
        """Each figure's mean over the tasks that have it."""
        return {name: float(np.nanmean(getattr(self, name))) if np.isfinite(getattr(self, name)).any()
                else float("nan") for name in SPREAD_FIGURES}

    def rows(self, tasks: list[str]) -> list[dict[str, object]]:
        """One row per task (the per-task CSV)."""
        return [{"task": task, **{name: float(getattr(self, name)[index]) for name in SPREAD_FIGURES}}
                for index, task in enumerate(tasks)]


def evaluate_spread(y_true: np.ndarray, y_score: np.ndarray, spread: np.ndarray, mask: np.ndarray,
                    top_fraction: float = TOP_FRACTION) -> SpreadReport:
    """The :class:`SpreadReport` of probabilities ``y_score`` and their
    spread (``[N, K]``) against 0/1 ``y_true`` where ``mask`` is True. A
    task's top is ceil(top_fraction * present) rows (ties in input order),
    its quartiles a quarter of them each (at least one row)."""
    y_true, y_score, mask = _check_task_arrays(y_true, y_score, mask)
    spread = np.asarray(spread, dtype=np.float64)
    n_tasks = y_true.shape[1]
    figures = np.full((len(SPREAD_FIGURES), n_tasks), np.nan)
    for task in range(n_tasks):
        present = mask[:, task]
        truth = (y_true[present, task] > 0).astype(np.float64)
        if not truth.any() or truth.size < 4:
            continue
        scores, deviation = y_score[present, task], spread[present, task]
        n_top = max(4, int(np.ceil(top_fraction * truth.size)))
        top = np.argsort(-scores, kind="mergesort")[:n_top]
        by_spread = top[np.argsort(deviation[top], kind="mergesort")]
        rank = np.arange(n_top, dtype=np.float64)
        excess = deviation[top] - np.polyval(np.polyfit(rank, deviation[top], 1), rank)
        by_excess = top[np.argsort(excess, kind="mergesort")]
        quarter = max(1, n_top // 4)
        error = np.abs(truth - scores)
        figures[:, task] = (truth[top].mean(), truth[by_spread[:quarter]].mean(),
                            truth[by_spread[-quarter:]].mean(), truth[by_excess[:quarter]].mean(),
                            truth[by_excess[-quarter:]].mean(), spearman(deviation, error),
                            spearman(deviation[top], error[top]))
    return SpreadReport(*figures)


def _check_task_arrays(y_true: np.ndarray, y_score: np.ndarray,
                       mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three ``[N, K]`` arrays of a per-task evaluation, as numpy (scores
    in float64, mask boolean), or a ValueError naming their shapes."""
    y_true, y_score, mask = np.asarray(y_true), np.asarray(y_score, dtype=np.float64), np.asarray(mask, bool)
    if not y_true.shape == y_score.shape == mask.shape or y_true.ndim != 2:
        raise ValueError(f"y_true {y_true.shape}, y_score {y_score.shape} and mask {mask.shape} "
                         "must be the same [N, K] shape")
    return y_true, y_score, mask


def delta_vs_reference(values: np.ndarray, reference_values: np.ndarray) -> float:
    """Delta in percent: mean over tasks of (M_k - M_ref_k) / M_ref_k * 100
    (Aoki et al. 2021, Tables 2-4, after Maninis et al. 2019; higher metrics
    are better, so no sign flip). Tasks where either value is NaN are left out."""
    values, reference_values = np.asarray(values, float), np.asarray(reference_values, float)
    if values.shape != reference_values.shape:
        raise ValueError(f"values {values.shape} and reference_values {reference_values.shape} differ in shape")
    usable = ~(np.isnan(values) | np.isnan(reference_values))
    if not usable.any():
        raise ValueError("no task has both a value and a reference value")
    return float(np.mean((values[usable] - reference_values[usable]) / reference_values[usable]) * 100.0)
