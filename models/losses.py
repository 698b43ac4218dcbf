"""Masked multi-task binary cross-entropy."""
from __future__ import annotations

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
