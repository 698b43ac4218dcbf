"""Masked multi-task binary cross-entropy, and per-task positive weights."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def masked_bce_per_task(logits: Tensor, labels: Tensor, mask: Tensor,
                        pos_weight: float | Tensor | None = None) -> Tensor:
    """Per-task mean BCE over the labels present: `[K]`, float32 or wider.

    logits `[B, K]`; labels `[B, K]` (0/1, any dtype; values where `mask` is
    False are ignored, e.g. -1 for missing); mask `bool[B, K]`. A task with no
    label in the batch gets 0 (and no gradient). pos_weight (a scalar or
    `[K]`) multiplies the loss of positive labels, for the 1-2 % active rate
    of PCBA (the reference code uses 100).
    """
    if logits.shape != labels.shape or logits.shape != mask.shape:
        raise ValueError(f"logits {tuple(logits.shape)}, labels {tuple(labels.shape)} and mask "
                         f"{tuple(mask.shape)} must have the same [B, K] shape")
    # At least float32: bf16 autocast logits are upcast, float64 stays float64.
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    mask = mask.bool()
    targets = torch.where(mask, labels.to(logits.dtype), torch.zeros((), dtype=logits.dtype,
                                                                    device=logits.device))
    if pos_weight is not None:
        pos_weight = torch.as_tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    per_label = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, targets, reduction="none", pos_weight=pos_weight)
    per_label = torch.where(mask, per_label, torch.zeros((), dtype=logits.dtype, device=logits.device))
    counts = mask.sum(dim=0).clamp(min=1).to(logits.dtype)
    return per_label.sum(dim=0) / counts


def positive_weights(labels: np.ndarray, cap: float) -> tuple[float, ...]:
    """Per-task w_k = min(neg_k / pos_k, cap) from training labels `[N, K]`
    (1 active, 0 inactive, anything else missing): PCBA's tasks differ 10x
    in their active rate, so one scalar over- or under-weights most of them.
    A task with no positive gets the cap, one with more positives than
    negatives weight < 1 (never below 1 / cap)."""
    labels = np.asarray(labels)
    positives = (labels == 1).sum(axis=0).astype(np.float64)
    negatives = (labels == 0).sum(axis=0).astype(np.float64)
    ratio = np.divide(negatives, positives, out=np.full_like(positives, cap), where=positives > 0)
    # Four significant digits: the weights are logged with the run as a param.
    return tuple(float(f"{weight:.4g}") for weight in np.clip(ratio, 1.0 / cap, cap))
