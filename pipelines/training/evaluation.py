"""The end-of-run look at the best model, on the held-out test split:
per-task AP/ROC-AUC, expert diversity (Aoki et al. 2021, Sec. 4.4) and gate
usage per task. Runs in the driver, in one pass over the test split."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from featurize.dataset import DatasetInfo
from featurize.tensors import unpack_fingerprints
from models.diversity import ExpertDistanceAccumulator, diversity_score
from models.metrics import TaskMetrics, evaluate_tasks
from pipelines.serving.bundle import ModelBundle
from pipelines.training.engine import iter_dataset_batches

EVAL_BATCH_SIZE = 4096


@dataclass(frozen=True)
class FinalEvaluation:
    """Test metrics and what the experts did. ``distance_matrix``/``diversity``
    and ``gate_usage`` (mean gate weight ``[K, E]``) are None for models without
    experts / gates; ``exclusive_expert_task`` maps expert -> task index."""

    split: str
    n_rows: int
    metrics: TaskMetrics
    distance_matrix: np.ndarray | None
    diversity: float | None
    gate_usage: np.ndarray | None
    exclusive_expert_task: dict[int, int]


@torch.inference_mode()
def evaluate_bundle(bundle: ModelBundle, info: DatasetInfo, split: str = "test",
                    device: torch.device | str = "cpu") -> FinalEvaluation:
    """Score ``split`` with the bundle's model and collect expert statistics."""
    model = bundle.model.to(device).eval()
    distances = ExpertDistanceAccumulator()
    gate_sum: torch.Tensor | None = None
    probs, labels = [], []
    for fp, batch_labels in iter_dataset_batches(info, split, EVAL_BATCH_SIZE):
        x = unpack_fingerprints(torch.as_tensor(fp).to(device), bundle.spec)
        probs.append(torch.sigmoid(model(x)).float().cpu().numpy())
        labels.append(batch_labels)
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
    )


def exclusive_assignment(model: torch.nn.Module) -> dict[int, int]:
    """Expert -> task for the exclusive experts (the ``exclusive_expert_task``
    buffer saved with MMoEEx; -1 entries are shared experts)."""
    for name, buffer in model.named_buffers():
        if name.endswith("exclusive_expert_task"):
            return {expert: int(task) for expert, task in enumerate(buffer.tolist()) if task >= 0}
    return {}
