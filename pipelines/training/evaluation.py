"""The end-of-run look at the best model: its probability calibration,
fitted on the validation split, then, on the held-out test split, per-task
AP/ROC-AUC, calibration error before and after, expert diversity (Aoki et
al. 2021, Sec. 4.4) and gate usage per task. Runs in the driver, one pass
over each split."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from featurize.dataset import DatasetInfo
from featurize.tensors import unpack_fingerprints
from models.diversity import ExpertDistanceAccumulator, diversity_score
from models.ensemble import member_probabilities
from models.metrics import (
    CalibrationMetrics,
    SpreadReport,
    TaskMetrics,
    evaluate_calibration,
    evaluate_spread,
    evaluate_tasks,
)
from pipelines.serving.bundle import ModelBundle
from pipelines.serving.calibration import Calibration, fit_calibration, members_spread
from pipelines.training.engine import iter_dataset_batches

EVAL_BATCH_SIZE = 4096


@dataclass(frozen=True)
class CalibrationReport:
    """A calibration and, on one split, the ECE and Brier score of the raw
    and the calibrated probabilities, and the ranking metrics of the
    calibrated ones (equal to the raw ones except where an isotonic map made
    ties)."""

    calibration: Calibration
    raw: CalibrationMetrics
    calibrated: CalibrationMetrics
    calibrated_ranking: TaskMetrics

    def rows(self) -> list[dict[str, object]]:
        """One row per task: its map, the labels it was fitted on, and the
        split's ECE and Brier score before and after (the per-task CSV)."""
        return [{**fitted, "ece_raw": float(self.raw.ece[index]),
                 "ece": float(self.calibrated.ece[index]),
                 "brier_raw": float(self.raw.brier[index]),
                 "brier": float(self.calibrated.brier[index])}
                for index, fitted in enumerate(self.calibration.rows())]


@dataclass(frozen=True)
class FinalEvaluation:
    """Test metrics and what the experts did. ``distance_matrix``/``diversity``
    and ``gate_usage`` (mean gate weight ``[K, E]``) are None for models without
    experts / gates; ``exclusive_expert_task`` maps expert -> task index;
    ``calibration`` is None for a bundle without calibration; ``spread``
    (does the members' spread tell right from wrong hits?) is an
    ensemble's only."""

    split: str
    n_rows: int
    metrics: TaskMetrics
    distance_matrix: np.ndarray | None
    diversity: float | None
    gate_usage: np.ndarray | None
    exclusive_expert_task: dict[int, int]
    calibration: CalibrationReport | None = None
    spread: SpreadReport | None = None


def _split_outputs(bundle: ModelBundle, info: DatasetInfo, split: str,
                   device: torch.device | str) -> Iterator[tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]]:
    """(model input, raw probabilities, the members' raw probabilities
    ``[N, B, K]``, labels) of each batch of ``split``; an ensemble's
    probability is its members' mean."""
    model = bundle.model.to(device).eval()
    for fp, labels in iter_dataset_batches(info, split, EVAL_BATCH_SIZE):
        x = unpack_fingerprints(torch.as_tensor(fp).to(device), bundle.spec)
        members = member_probabilities(model, x).float().cpu().numpy()
        yield x, members.mean(axis=0), members, labels


@torch.inference_mode()
def fit_bundle_calibration(bundle: ModelBundle, info: DatasetInfo, split: str = "valid",
                           device: torch.device | str = "cpu") -> Calibration:
    """Per-assay calibration maps of the bundle's raw probabilities, fitted
    on ``split``'s present labels (see pipelines/serving/calibration.py)."""
    outputs = [(probs, labels) for _, probs, _, labels in _split_outputs(bundle, info, split, device)]
    if not outputs:
        raise ValueError(f"{info.path}: the {split} split is empty")
    probs, labels = (np.concatenate(arrays) for arrays in zip(*outputs))
    return fit_calibration(probs, labels, bundle.tasks, split=split)


def calibration_report(labels: np.ndarray, raw: np.ndarray,
                       calibration: Calibration) -> CalibrationReport:
    """How ``calibration`` changes the raw probabilities' fit to ``labels``
    (> 0 active, >= 0 present)."""
    truth, present = labels > 0, labels >= 0
    calibrated = calibration.apply(raw)
    return CalibrationReport(calibration=calibration, raw=evaluate_calibration(truth, raw, present),
                             calibrated=evaluate_calibration(truth, calibrated, present),
                             calibrated_ranking=evaluate_tasks(truth, calibrated, present))


@torch.inference_mode()
def evaluate_bundle(bundle: ModelBundle, info: DatasetInfo, split: str = "test",
                    device: torch.device | str = "cpu") -> FinalEvaluation:
    """Score ``split`` with the bundle's model and collect expert statistics."""
    model = bundle.model.to(device).eval()
    distances = ExpertDistanceAccumulator()
    gate_sum: torch.Tensor | None = None
    probs, spreads, labels = [], [], []
    for x, batch_probs, members, batch_labels in _split_outputs(bundle, info, split, device):
        probs.append(batch_probs)
        labels.append(batch_labels)
        if bundle.n_members > 1:  # the spread a user reads: of calibrated probabilities where calibrated
            spreads.append(members_spread(members, bundle.calibration))
        experts = model.expert_outputs(x)
        if experts is not None:
            distances.update(experts)
        gates = model.gate_weights(x)
        if gates is not None:
            batch_sum = gates.double().sum(dim=0)
            gate_sum = batch_sum if gate_sum is None else gate_sum + batch_sum
    if not probs:
        raise ValueError(f"{info.path}: the {split} split is empty")
    all_probs, all_labels = np.concatenate(probs), np.concatenate(labels)
    matrix = distances.distance_matrix() if distances.n_samples else None
    return FinalEvaluation(
        split=split,
        n_rows=len(all_labels),
        metrics=evaluate_tasks(all_labels > 0, all_probs, all_labels >= 0),
        distance_matrix=matrix,
        diversity=None if matrix is None else diversity_score(matrix),
        gate_usage=None if gate_sum is None else (gate_sum / len(all_labels)).cpu().numpy(),
        exclusive_expert_task=exclusive_assignment(model),
        calibration=None if bundle.calibration is None else
        calibration_report(all_labels, all_probs, bundle.calibration),
        spread=None if bundle.n_members == 1 else spread_report(bundle, all_labels, all_probs, spreads),
    )


def spread_report(bundle: ModelBundle, labels: np.ndarray, raw: np.ndarray,
                  spreads: list[np.ndarray]) -> SpreadReport:
    """An ensemble's spread report on the scores it serves (calibrated
    where it has a calibration): do its members disagree on wrong hits?"""
    served = raw if bundle.calibration is None else bundle.calibration.apply(raw)
    return evaluate_spread(labels > 0, served, np.concatenate(spreads), labels >= 0)


def exclusive_assignment(model: torch.nn.Module) -> dict[int, int]:
    """Expert -> task for the exclusive experts (the ``exclusive_expert_task``
    buffer saved with MMoEEx; -1 entries are shared experts). An ensemble's
    (members x experts) is left to its members' runs."""
    for name, buffer in model.named_buffers():
        if name.endswith("exclusive_expert_task") and buffer.dim() == 1:
            return {expert: int(task) for expert, task in enumerate(buffer.tolist()) if task >= 0}
    return {}
